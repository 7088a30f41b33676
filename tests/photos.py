"""Real photos from the scikit-image wheel and the transforms tests apply to them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Seven distinct photos: scikit-image's ``cat`` is ``chelsea``, pixel for pixel (tests that share a kept blob
# between two images rely on it; a test that needs distinct photos takes PHOTO_NAMES[:5]).
PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "camera", "cat", "hubble_deep_field", "immunohistochemistry")


def encode(array_or_image: np.ndarray | Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def photo(name: str) -> np.ndarray:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def crop(arr: np.ndarray, frac: float = 0.75, shift: float = 0.1) -> np.ndarray:
    h, w = arr.shape[:2]
    ch, cw = int(h * frac), int(w * frac)
    top, left = int(h * shift), int(w * shift)
    return arr[top : top + ch, left : left + cw]


def resize(arr: np.ndarray, scale: float) -> np.ndarray:
    img = Image.fromarray(arr)
    return np.asarray(img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.BICUBIC))


def exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    """A JPEG of ``img`` whose EXIF says to rotate it by ``orientation`` (1-8) when shown."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()
