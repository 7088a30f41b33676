"""Decode one image from a path, an ``oss://`` key or bytes; every failure becomes ``UnreadableImage``."""

from __future__ import annotations

import io
from pathlib import Path

from lookalike.trainer.data.oss import OssReader, is_oss
from PIL import Image, UnidentifiedImageError

from lookalike.modelfile import to_rgb, upright

# Failures of a single file: missing, truncated, not an image, too large to be a real photo.
_DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError)


class UnreadableImage(Exception):
    """One image could not be read; the caller skips it and counts it."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"{ref}: {reason}")
        self.ref = ref
        self.reason = reason


def read_bytes(ref: str, oss: OssReader | None = None) -> bytes:
    """Raw bytes of a local file or an ``oss://`` object."""
    try:
        if is_oss(ref):
            return (oss or OssReader()).read(ref)
        return Path(ref).read_bytes()
    except OSError as exc:
        raise UnreadableImage(ref, exc.strerror or str(exc) or type(exc).__name__) from exc


def decode_image(data: bytes, ref: str = "<bytes>") -> Image.Image:
    """Fully decoded, upright 8-bit RGB image, converted as the server converts it.

    Decoding is forced here, so truncation is caught here. The EXIF orientation is applied and
    16-bit / float / transparent pixels are converted like the server's decoder does
    (``lookalike.modelfile.to_rgb``), so training and evaluation see what serving sees.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(upright(img))
    except _DECODE_ERRORS as exc:
        raise UnreadableImage(ref, f"{type(exc).__name__}: {exc}") from exc


def load_image(ref: str, oss: OssReader | None = None) -> Image.Image:
    return decode_image(read_bytes(ref, oss), ref)
