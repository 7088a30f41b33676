"""Turning untrusted encoded bytes into a decoded RGB image, or a clear error.

Decoding runs on the caller's thread (gRPC handler threads already form a pool, and
Pillow releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import io
import re
import warnings

from lookalike.server.core.errors import invalid
from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.init()  # register every plugin now, so the format list below is complete
ALLOWED_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF") if f in Image.OPEN)


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    draft_size: int | None = None,
    field: str = "image",
) -> Image.Image:
    """Decode ``data`` (first frame for GIF/TIFF) into an RGB image.

    ``draft_size`` lets JPEG decode at a reduced scale no smaller than the model needs,
    which is several times faster for camera-sized photos.
    """
    if not data:
        raise invalid("IMAGE_MISSING", f"{field} is empty; send the encoded file bytes", field=field)
    if len(data) > max_bytes:
        raise invalid(
            "IMAGE_TOO_LARGE",
            f"{field} is {len(data)} bytes, over the server limit of {max_bytes}; resize it first",
            field=field,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise invalid(
                    "IMAGE_TOO_LARGE",
                    f"{field} is {w}x{h} pixels, over the server limit of {max_pixels}; resize it first",
                    field=field,
                )
            if w == 0 or h == 0:
                raise invalid("IMAGE_UNDECODABLE", f"{field} has zero width or height", field=field)
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.seek(0)
            img.load()
            return img.convert("RGB")
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        EOFError,
    ) as exc:
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise invalid(
                "IMAGE_TOO_LARGE", f"{field} has too many pixels ({exc}); resize it first", field=field
            ) from None
        if isinstance(exc, UnidentifiedImageError):
            why = "the bytes are not a JPEG, PNG, WebP, BMP, GIF or TIFF file"
        else:  # Pillow's own words (e.g. "image file is truncated"), without object reprs
            why = re.sub(r"<[^>]*object at 0x[0-9a-f]+>", "the data", str(exc)) or type(exc).__name__
        raise invalid(
            "IMAGE_UNDECODABLE",
            f"{field} could not be decoded: {why}; send the complete, unmodified file bytes",
            field=field,
        ) from None
