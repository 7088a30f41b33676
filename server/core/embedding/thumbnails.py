"""The kept copy of a registered image: the smallest re-encoding that re-embeds like the original.

A database keeps a thumbnail of every registered image so that the catalogue can be re-embedded
with another model (``lookalike db reindex``) without the images being uploaded again. The
constants below are the smallest setting measured to re-embed faithfully with the default model
(median cosine to the original's vector >= 0.995, mAP within 0.3 points of the originals'), by
``bench/thumbnail_fidelity.py --formats jpeg --sides 352,384,416,448 --qualities 91,92,93,94`` over
54 photos and four labelled sets (and earlier ``--formats jpeg,webp --sides 384,448 --qualities
90,95,97 --all``): a photo is downscaled (antialiased bicubic) to a longer side of 416 and kept as a
JPEG at quality 91 (25.7 KB a photo on average, 7.5% of the uploads; median cosine 0.9954, 5th
percentile 0.985). The runners-up: 384 at quality 94 (28.1 KB, 0.9954) and 448 at 91 (28.7 KB,
0.9958); 384 at 93 and below and every 352 fail (0.9947 and less). The downscale is the thumbnail's
largest cost: the native kernel (``downscale``; AVX-512 VBMI) takes 0.39 ms a 640x480 photo, torch's
uint8 kernel 1.08 with its copies (where the CPU has no VBMI; the same bytes), Pillow's 2.4 (bicubic)
and 4.0 (Lanczos) (``bench/downscale.py``); at 448 and quality 90 the thumbnails of the first two land on
the bar (0.9950), Pillow's bicubic at 0.9953 and Lanczos at 0.9959; bilinear fails (0.9941). The
size also sets the CPU a registration spends on its thumbnail (the issue's budget: at most 15% slower
than keeping nothing): 416 px costs about a tenth less than 448 in the downscale and the encode.
Measured and not kept: writing the JPEG with torchvision's encoder, which releases the GIL where
Pillow's holds it (the same bytes): 0.70 ms a 448 px thumbnail from the planes against 0.50 for
Pillow's interleave and encode, and no faster registration (``bench/image_store.py``).

An image that needs no downscaling and is small (an icon, an emoji) is kept pixel for pixel, WebP
lossless, when that takes at most ``LOSSLESS_MAX_BYTES``: the model enlarges such images, so lossy
artifacts are magnified instead of averaged away (JPEG at quality 97 alone re-embeds emoji at
median cosine 0.971; kept exact, 1.0000 on every labelled set).

Why JPEG and not WebP for photos: at the same size and fidelity (WebP 384 at quality 97: 27.6 KB,
0.9951) WebP's encoder costs about 12 ms a thumbnail here and JPEG's about 1 ms, and the
thumbnail is made on every registration (the issue's budget: at most 15% slower than keeping
nothing). Lower qualities fail on flat, low-texture photos first (at WebP 85 a smooth photo
re-embeds at cosine 0.79 even at full size): the encoders smooth away faint texture the model
relies on when there is little else. The next settings up: JPEG 384/95 (30.1 KB, 0.9966) and
448/95 (38.6 KB, 0.9970).

The input is decoded exactly as the embedder decodes it (``images.decode_image``: the same byte,
pixel and aspect-ratio limits checked from the header, the same decode budget, EXIF orientation
applied, transparency composited on white), so an image the embedder accepts gets a thumbnail and
one it refuses raises the same ``LookalikeError``. The result is always a re-encoding, even when
the original is smaller than its thumbnail would be: the orientation baked into the pixels, and no
metadata (EXIF, GPS, ICC) of the upload kept.
"""

from __future__ import annotations

import io
import threading
import warnings

from lookalike.server.core.embedding.images import PixelBudget, decode_image
from lookalike.server.defaults import MAX_ASPECT_RATIO, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from PIL import Image

from lookalike.modelfile import to_rgb

try:
    from lookalike import _native  # the resampler (ext/); absent on a client-side install
except ImportError:
    _native = None

THUMBNAIL_FORMAT = "jpeg"  # photos; small images are kept exact as WebP lossless
THUMBNAIL_MAX_SIDE = 416
THUMBNAIL_QUALITY = 91
FORMATS = {"webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg")}
THUMBNAIL_MEDIA_TYPE = FORMATS[THUMBNAIL_FORMAT][1]
# An image kept at its own size is kept exact (WebP lossless, whatever the lossy format) when that takes at
# most this many bytes; tried only up to this many pixels (a photo that size is never that small lossless,
# and WebP's lossless encoder costs ~50 ms at 384 x 384).
LOSSLESS_MAX_BYTES = 16 * 1024
LOSSLESS_MAX_PIXELS = 256 * 256
RESIZE_FILTER = Image.Resampling.BICUBIC  # Pillow's, where neither the native nor torch's kernel runs (downscale)


def media_type(fmt: str) -> str:
    """The HTTP media type of a thumbnail written in ``fmt`` (``"webp"`` or ``"jpeg"``)."""
    return FORMATS[_checked_format(fmt)][1]


def _checked_format(fmt: str) -> str:
    key = fmt.lower()
    if key not in FORMATS:
        raise ValueError(f"thumbnail format must be one of {sorted(FORMATS)}, got {fmt!r}")
    return key


def thumbnail_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(w, h)`` with the longer side at most ``max_side``, the aspect ratio kept; never larger than given."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    scale = max_side / longer
    return max(1, min(max_side, round(width * scale))), max(1, min(max_side, round(height * scale)))


def encode_thumbnail(
    image: Image.Image,
    *,
    max_side: int = THUMBNAIL_MAX_SIDE,
    quality: int = THUMBNAIL_QUALITY,
    fmt: str = THUMBNAIL_FORMAT,
) -> bytes:
    """An already decoded, upright image -> thumbnail bytes (RGB, longer side <= ``max_side``).

    An image that needs no downscaling is kept pixel for pixel (WebP lossless) when that takes at
    most ``LOSSLESS_MAX_BYTES``, less than a downscaled photo's thumbnail: icons, emoji, drawings
    and small photos, which the model enlarges to its input size, so lossy artifacts are magnified
    instead of averaged away (measured with the default model: 64 px emoji at WebP quality 95
    re-embed at median cosine 0.98, at JPEG 95 at 0.965; lossless, they take 2-3 KB). A bound in
    bytes, not a ratio to the lossy copy: an emoji's lossless copy is up to 3x its lossy one, a
    text scan's 1.5x. ``fmt="jpeg"`` has no lossless mode: always lossy.

    For a caller that holds the embedder's decode: its JPEG draft keeps at least twice the model's
    input size a side, more than ``max_side`` needs, so no second decode is needed.
    """
    key = _checked_format(fmt)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    img = to_rgb(image)
    size = thumbnail_size(img.width, img.height, max_side)
    if size != img.size:
        return _encode(downscale(img, size), key, quality)
    if img.width * img.height <= LOSSLESS_MAX_PIXELS:  # small: an icon, an emoji, a tiny photo
        exact = _encode(img, "webp", quality, lossless=True)
        if len(exact) <= LOSSLESS_MAX_BYTES:
            return exact
    return _encode(img, key, quality)


_SINGLE = threading.local()  # threads (the decode pool's, a request's) whose torch runs single-threaded here
# downscale's torch.frombuffer warns (once) that the bytes are read-only: they are only read.
warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)


def downscale(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Antialiased bicubic to ``size``, the thumbnail's largest cost. In order: the native kernel
    (``ext/include/lookalike/resample.hpp``: AVX-512 VBMI, 0.39 ms a 640x480 photo read in place,
    ``bench/downscale.py``), then torch's uint8 kernel (1.08 ms with its copies) where the CPU has no AVX-512
    VBMI or the scale is past what the native kernel's window holds, then Pillow (2.4 ms) where neither is
    there (a client-side install) or the image is not 8-bit RGB. The first two give the same bytes (both are
    Pillow-SIMD's 16-bit arithmetic; within 1-2 levels of Pillow's), so a thumbnail does not depend on the
    machine that made it. The native result is an ``RGBX`` image over the kernel's own bytes (no copy; the
    JPEG encoder takes it as is)."""
    if img.mode == "RGB":
        fast = _native_downscale(img, size)
        if fast is not None:
            return fast
        try:
            import torch
        except ImportError:
            pass
        else:
            if not getattr(_SINGLE, "set", False):  # per thread (OpenMP): the model's workers keep theirs
                torch.set_num_threads(1)  # two threads on one small image cost 3x the CPU of one (measured)
                _SINGLE.set = True
            # In: the pixels as they lie (channels last, the layout torch's SIMD kernel takes). Out: three planes,
            # which Pillow interleaves (merge) for a third of torch's permute-and-copy plus fromarray (0.11 ms
            # against 0.36 a photo; the same bytes).
            raw = torch.frombuffer(img.tobytes(), dtype=torch.uint8)  # one copy (np.array makes two)
            pixels = raw.view(img.height, img.width, 3).permute(2, 0, 1).unsqueeze(0)
            out = torch.nn.functional.interpolate(pixels, size=(size[1], size[0]), mode="bicubic", antialias=True)
            planes = out[0].numpy()
            return Image.merge("RGB", [Image.frombuffer("L", size, plane, "raw", "L", 0, 1) for plane in planes])
    # Pillow: from an image first reduced by whole factors (reducing_gap), sharp and fast on large ones.
    return img.resize(size, RESIZE_FILTER, reducing_gap=3.0)


def _native_downscale(img: Image.Image, size: tuple[int, int]) -> Image.Image | None:
    """The native kernel's result, or None where it would not be the fastest way (see ``downscale``)."""
    if _native is None:
        return None
    try:  # the image's own rows, read in place (Pillow's Arrow export of its 4-byte RGB pixels)
        out = _native.downscale_rgbx(img, img.width, img.height, *size, only_fast=True)
    except ValueError:  # rows not in one block (a large image): a copy, RGBX as Pillow holds them (no repack)
        out = _native.downscale_rgbx(img.tobytes("raw", "RGBX"), img.width, img.height, *size, only_fast=True)
    return None if out is None else Image.frombuffer("RGBX", size, out, "raw", "RGBX", 0, 1)


def _encode(img: Image.Image, key: str, quality: int, lossless: bool = False) -> bytes:
    buf = io.BytesIO()
    if lossless:
        img.save(buf, "WEBP", lossless=True, method=4)
    elif key == "webp":
        img.save(buf, "WEBP", quality=quality, method=4)
    else:
        img.save(buf, "JPEG", quality=quality)  # no optimize pass: the same pixels, 2% larger, 4x faster to write
    return buf.getvalue()


def make_thumbnail(
    image: bytes,
    *,
    max_side: int = THUMBNAIL_MAX_SIDE,
    quality: int = THUMBNAIL_QUALITY,
    fmt: str = THUMBNAIL_FORMAT,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    budget: PixelBudget | None = None,
    field: str = "image",
) -> bytes:
    """Encoded image bytes -> thumbnail bytes in ``fmt``, never upscaled.

    An image no larger than ``max_side`` may be kept exact (see ``encode_thumbnail``).
    Raises the embedder's ``LookalikeError`` (``IMAGE_UNDECODABLE``, ``IMAGE_TOO_LARGE``, ...) for
    bytes it would refuse. JPEGs decode at a reduced DCT scale that still keeps ``max_side`` on the
    shorter side, so a camera photo costs a fraction of a full decode.
    """
    _checked_format(fmt)
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    img = decode_image(
        image,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        draft_size=max_side,
        field=field,
        max_aspect_ratio=max_aspect_ratio,
        budget=budget,
    )
    return encode_thumbnail(img, max_side=max_side, quality=quality, fmt=fmt)
