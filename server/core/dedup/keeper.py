"""Which member of a duplicate cluster to suggest keeping: the rules, their parsing, the choice.

Every rule falls back to the most central member when the data it needs is missing, and breaks
ties in favour of the more central member, so the choice never depends on item order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

KEEPER_FORMS = '"central", "largest", "earliest", "latest", "attribute:KEY" or "attribute:KEY:min"'
_KINDS = ("central", "largest", "earliest", "latest", "attribute")


@dataclass(frozen=True)
class KeeperRule:
    """Which member of a cluster to suggest keeping; ties (and missing data) go to the more central."""

    kind: str = "central"  # "central" | "largest" | "earliest" | "latest" | "attribute"
    key: str = ""  # the attribute, for kind == "attribute"
    highest: bool = True  # attribute: keep the highest value (numeric if every present value is a number)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS or (self.kind == "attribute") != bool(self.key):
            raise ValueError(f"keeper rule {self!r} is invalid; use one of {KEEPER_FORMS}")

    @classmethod
    def parse(cls, text: str) -> KeeperRule:
        """``central`` (also the empty string), ``largest``, ``earliest``, ``latest``, ``attribute:KEY[:min|:max]``."""
        text = text.strip()
        if text in ("", "central", "largest", "earliest", "latest"):
            return cls(text or "central")
        if text.startswith("attribute:"):
            key, highest = text[len("attribute:") :], True
            if key.endswith((":min", ":max")):
                key, highest = key[:-4], key.endswith(":max")
            if key:
                return cls("attribute", key, highest)
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"keeper {shown!r} is not a keeper rule; use one of {KEEPER_FORMS}")


def _no_attribute(item: int, key: str) -> str | None:
    return None


@dataclass(frozen=True, eq=False)
class ItemInfo:
    """What the keeper rules read, indexed by item number."""

    time: np.ndarray  # float64 registration time in seconds since the epoch; NaN = unknown
    pixels: np.ndarray | None = None  # int64 width * height; 0 = unknown
    attribute: Callable[[int, str], str | None] = _no_attribute  # (item, key) -> value or None


def choose_keeper(items: np.ndarray, mean: float, rule: KeeperRule, info: ItemInfo) -> tuple[int, str]:
    """Index into ``items`` (a cluster's members, most central first) of the one to keep, and why."""
    central = f"most central (mean similarity {mean:.4f})"
    if rule.kind == "largest":
        pixels = None if info.pixels is None else info.pixels[items].astype(np.float64)
        at = None if pixels is None else _best(np.where(pixels > 0, pixels, np.nan), True)
        return (0, "no pixel sizes; " + central) if at is None else (at, f"largest ({int(pixels[at])} px)")
    if rule.kind in ("earliest", "latest"):
        times = info.time[items].astype(np.float64)
        at = _best(times, rule.kind == "latest")
        if at is None:
            return 0, "no registration times; " + central
        when = datetime.fromtimestamp(float(times[at]), tz=timezone.utc).isoformat(timespec="seconds")
        return at, f"{rule.kind} (registered {when.replace('+00:00', 'Z')})"
    if rule.kind == "attribute":
        values = [info.attribute(item, rule.key) for item in items.tolist()]
        present = [(v, r) for r, v in enumerate(values) if v is not None]
        if not present:
            return 0, f"no member has attribute {rule.key!r}; " + central
        numbers = [_number(v) for v, _ in present]
        keyed = list(zip(numbers, [r for _, r in present], strict=True)) if None not in numbers else present
        best = max(keyed, key=lambda p: (p[0], -p[1])) if rule.highest else min(keyed)
        return best[1], f"{'highest' if rule.highest else 'lowest'} {rule.key} ({values[best[1]]})"
    return 0, central


def _best(values: np.ndarray, highest: bool) -> int | None:
    """The first (most central) index holding the highest or lowest known value; None if none is known."""
    known = ~np.isnan(values)
    if not known.any():
        return None
    target = values[known].max() if highest else values[known].min()
    return int(np.flatnonzero(values == target)[0])


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
