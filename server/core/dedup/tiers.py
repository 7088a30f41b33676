"""Similarity tiers: a model's calibrated cosine thresholds ("duplicate", "near", "similar") by name.

The thresholds are measured per model and stored in its file (``lookalike calibrate``); the
duplicate finder, the duplicate check of a write and ``min_tier`` of a search all turn a tier
name into a threshold here, so the three never disagree.
"""

from __future__ import annotations

import math
from typing import Any

from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid

from lookalike.modelfile import TIER_NAMES

TIERS = TIER_NAMES
# A threshold of 1 means "identical": a unit vector's product with itself rounds to 1 +- a few ulps in float32,
# so scores this close to 1 count (else an image would not match its own copy at 1.0).
IDENTICAL = 1.0 - 1e-6
DEFAULT_TIER = "duplicate"


def tiers_unknown(model_name: str) -> LookalikeError:
    return LookalikeError(
        ErrorKind.FAILED_PRECONDITION, "TIERS_UNKNOWN",
        f"model {model_name!r} has no calibrated similarity tiers; give a threshold instead, or calibrate the "
        "model file (lookalike calibrate MODEL) and restart the server",
    )  # fmt: skip


def resolve(tiers: dict[str, Any] | None, model_name: str, tier: str, threshold: float | None) -> tuple[float, str]:
    """(cosine threshold, tier name or "") from a tier name or an explicit threshold; the tier's default otherwise."""
    if threshold is not None:
        if tier:
            raise invalid("THRESHOLD_INVALID", "give a tier or a threshold, not both")
        if not (math.isfinite(threshold) and -1.0 < threshold <= 1.0):
            raise invalid("THRESHOLD_INVALID", f"threshold {threshold} must be a cosine in (-1, 1]")
        return min(float(threshold), IDENTICAL), ""
    name = tier or DEFAULT_TIER
    if name not in TIERS:
        raise invalid("TIER_INVALID", f"tier {tier!r} is not one of {', '.join(TIERS)}")
    if not tiers or name not in tiers:
        raise tiers_unknown(model_name)
    return float(tiers[name]), name
