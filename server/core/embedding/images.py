"""Turning untrusted encoded bytes into a decoded, upright RGB image, or a clear error.

Decoding runs on the caller's thread (gRPC handler threads already form a pool, and
Pillow releases the GIL while decoding and resizing). Every limit is checked from the
header, before a single pixel is decoded: bytes, pixels (the server's own limit, never
Pillow's), and shape (a 1 x 100000 image is refused instead of being stretched to gigabytes).
The pixels being decoded at once are bounded by a budget, so concurrent large uploads cannot
take all the memory, and memory freed after a large decode is handed back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from lookalike.server.core.errors import LookalikeError, invalid
from lookalike.server.defaults import DECODE_BUDGET_PIXELS, MAX_ASPECT_RATIO
from PIL import Image, ImageFile, UnidentifiedImageError

from lookalike.modelfile import to_rgb, upright

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow warns between its MAX_IMAGE_PIXELS and twice that; the server's own limit decides instead.
# (Set once here: warnings.catch_warnings() per call is not thread-safe.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
Image.init()  # register every plugin now, so the format list below is complete
ALLOWED_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF") if f in Image.OPEN)

# Decodes at least this large hand their freed memory back to the system afterwards.
TRIM_AFTER_PIXELS = 4_000_000

_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")


class PixelBudget:
    """A counting semaphore in pixels: decodes wait while the pixels in flight would exceed it.

    One decode always proceeds alone, whatever its size (it already passed the pixel limit),
    so the budget bounds the working set without refusing anything.
    """

    def __init__(self, pixels: int) -> None:
        self.capacity = pixels
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._cond:
            while self.in_use > 0 and self.in_use + pixels > self.capacity:
                self._cond.wait()
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


DECODE_BUDGET = PixelBudget(DECODE_BUDGET_PIXELS)


def _load_malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> None:
    """Return freed heap pages to the system (glibc keeps them per thread arena otherwise)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)  # type: ignore[operator]


def _too_large(field: str, what: str, limit: int) -> LookalikeError:
    return invalid(
        "IMAGE_TOO_LARGE",
        f"{field} {what}, over the server limit of {limit} pixels; resize it to at most {limit} pixels first",
        field=field,
    )


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    draft_size: int | None = None,
    field: str = "image",
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    budget: PixelBudget | None = None,
) -> Image.Image:
    """Decode ``data`` (first frame for GIF/TIFF) into an upright 8-bit RGB image.

    ``draft_size`` lets JPEG decode at a reduced scale no smaller than the model needs,
    which is several times faster for camera-sized photos and bounds their memory.
    16-bit and float pixels are scaled by their range, transparency is composited onto
    white, and the EXIF orientation is applied (``lookalike.modelfile.to_rgb``, ``upright``).
    """
    if not data:
        raise invalid("IMAGE_MISSING", f"{field} is empty; send the encoded file bytes", field=field)
    if len(data) > max_bytes:
        raise invalid(
            "IMAGE_TOO_LARGE",
            f"{field} is {len(data)} bytes, over the server limit of {max_bytes} bytes; resize it first",
            field=field,
        )
    # Pillow refuses on its own above twice its MAX_IMAGE_PIXELS; quote the limit that applies.
    pillow_hard_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else max_pixels
    limit = min(max_pixels, pillow_hard_limit)
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        w, h = img.size
        if w == 0 or h == 0:
            raise invalid("IMAGE_UNDECODABLE", f"{field} has zero width or height", field=field)
        if w * h > limit:
            raise _too_large(field, f"is {w}x{h} = {w * h} pixels", limit)
        if max(w, h) > max_aspect_ratio * min(w, h):
            raise invalid(
                "IMAGE_SHAPE_INVALID",
                f"{field} is {w}x{h} pixels, an aspect ratio of {max(w, h) / min(w, h):.0f}:1, over the server "
                f"limit of {max_aspect_ratio:g}:1 (longest side / shortest side); crop or pad it first",
                field=field,
            )
        if draft_size is not None and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (draft_size, draft_size))  # decode at 1/2, 1/4 or 1/8 scale when that suffices
        dw, dh = img.size
        with (budget or DECODE_BUDGET).hold(dw * dh):
            img.seek(0)
            img.load()
            out = to_rgb(upright(img))
        if dw * dh >= TRIM_AFTER_PIXELS:
            del img
            release_memory()
        return out
    except Image.DecompressionBombError as exc:
        found = _BOMB_SIZE.search(str(exc))
        raise _too_large(field, f"has {found.group(1)} pixels" if found else "has too many pixels", limit) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            why = "the bytes are not a JPEG, PNG, WebP, BMP, GIF or TIFF file"
        elif isinstance(exc, MemoryError):
            why = "it needs more memory than the server has free"
        else:  # Pillow's own words (e.g. "image file is truncated"), without object reprs
            why = re.sub(r"<[^>]*object at 0x[0-9a-f]+>", "the data", str(exc)) or type(exc).__name__
        raise invalid(
            "IMAGE_UNDECODABLE",
            f"{field} could not be decoded: {why}; send the complete, unmodified file bytes",
            field=field,
        ) from None
