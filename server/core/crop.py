"""A region of a query image (a product in a scene): validated once here, for every wire.

A crop is four fractions of the upright image (EXIF orientation applied first): ``x``, ``y`` the
top-left corner, ``width``, ``height`` the size, each in [0, 1], inside the image. The fractions are
checked before anything is decoded (``check_crop``); the pixel box, rounded to whole pixels, is
checked against the decoded image (``pixel_box``): a box under ``MIN_CROP_PIXELS`` on a side is
refused rather than stretched into a meaningless embedding.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from lookalike.server.core.errors import LookalikeError, invalid

MIN_CROP_PIXELS = 8  # a side of the rounded box at least this long
SLACK = 1e-6  # x + width may pass 1 by float32 rounding (0.7f + 0.3f); the pixel box is clamped to the image


@dataclass(frozen=True)
class Crop:
    """Fractions of the upright image: top-left corner (x, y) and size (width, height)."""

    x: float
    y: float
    width: float
    height: float


def _bad(field: str, why: str) -> LookalikeError:
    return invalid(
        "CROP_INVALID",
        f"{field} {why}; give x, y, width, height as fractions of the upright image (each in [0, 1], width and "
        "height above 0, x + width <= 1, y + height <= 1), e.g. 0.25, 0.25, 0.5, 0.5 for the middle quarter",
        field=field,
    )


def check_crop(crop: Crop | Sequence[float] | None, field: str = "crop") -> Crop | None:
    """``crop`` (a Crop or an (x, y, width, height) sequence) as a valid Crop, None for none; CROP_INVALID else."""
    if crop is None:
        return None
    if not isinstance(crop, Crop):
        values = list(crop)
        if len(values) != 4:
            raise _bad(field, f"has {len(values)} numbers, not 4")
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            raise _bad(field, "must be 4 numbers")
        crop = Crop(*(float(v) for v in values))
    for name in ("x", "y", "width", "height"):
        value = getattr(crop, name)
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise _bad(field, f"{name} is {value:g}, outside [0, 1]")
    if crop.width <= 0.0 or crop.height <= 0.0:
        raise _bad(field, f"is {crop.width:g} wide and {crop.height:g} high: an empty box")
    if crop.x + crop.width > 1.0 + SLACK:
        raise _bad(field, f"x + width is {crop.x + crop.width:g}, past the image's right edge")
    if crop.y + crop.height > 1.0 + SLACK:
        raise _bad(field, f"y + height is {crop.y + crop.height:g}, past the image's bottom edge")
    return crop


def _edge(fraction: float, size: int) -> int:
    return min(size, max(0, math.floor(fraction * size + 0.5)))  # to the nearest pixel edge, halves up


def pixel_box(crop: Crop, width: int, height: int, field: str = "crop") -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of ``crop`` in a ``width`` x ``height`` image, each edge rounded to the
    nearest pixel edge; CROP_INVALID when the box is under MIN_CROP_PIXELS on a side."""
    left, right = _edge(crop.x, width), _edge(crop.x + crop.width, width)
    top, bottom = _edge(crop.y, height), _edge(crop.y + crop.height, height)
    if right - left < MIN_CROP_PIXELS or bottom - top < MIN_CROP_PIXELS:
        raise invalid(
            "CROP_INVALID",
            f"{field} is {right - left}x{bottom - top} pixels of the {width}x{height} image, under "
            f"{MIN_CROP_PIXELS} pixels on a side; make the box larger (at least {MIN_CROP_PIXELS / width:.3g} wide "
            f"and {MIN_CROP_PIXELS / height:.3g} high as fractions) or send a larger image",
            field=field,
        )
    return left, top, right, bottom


def draft_for(draft_size: int | None, crop: Crop | None) -> int | None:
    """The JPEG draft size that still leaves the cropped region ``draft_size`` pixels on each side."""
    if draft_size is None or crop is None:
        return draft_size
    return math.ceil(draft_size / min(crop.width, crop.height))


__all__ = ["MIN_CROP_PIXELS", "Crop", "check_crop", "draft_for", "pixel_box"]
