"""The kept thumbnail of a registered image (``lookalike.server.core.embedding.thumbnails``): upright, bounded,
never upscaled, on white, refused like the embedder refuses, and re-embedding like its original."""

from __future__ import annotations

import io

import numpy as np
import pytest
from lookalike.server.core.embedding.images import decode_image
from lookalike.server.core.embedding.thumbnails import (
    LOSSLESS_MAX_BYTES,
    THUMBNAIL_FORMAT,
    THUMBNAIL_MAX_SIDE,
    THUMBNAIL_MEDIA_TYPE,
    THUMBNAIL_QUALITY,
    make_thumbnail,
    media_type,
    thumbnail_size,
)
from lookalike.server.core.errors import LookalikeError
from photos import PHOTO_NAMES, encode, exif_jpeg, photo
from PIL import Image

from lookalike import _native

LIMITS = {"max_bytes": 1 << 24, "max_pixels": 1 << 24}


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_constants_name_a_format_the_server_decodes():
    assert THUMBNAIL_FORMAT in ("webp", "jpeg") and 1 <= THUMBNAIL_QUALITY <= 100
    assert THUMBNAIL_MEDIA_TYPE == media_type(THUMBNAIL_FORMAT)
    # The model sees 224 x 224: a smaller kept copy would be upscaled on re-embedding.
    assert THUMBNAIL_MAX_SIDE >= 224
    out = _open(make_thumbnail(encode(photo("chelsea"), "PNG")))
    assert out.format == THUMBNAIL_FORMAT.upper() and out.mode == "RGB"
    assert not out.getexif()  # no metadata of the upload is kept


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
@pytest.mark.parametrize("orientation, stored", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_rotated_input_gives_an_upright_thumbnail(fmt, orientation, stored):
    upright = Image.fromarray(photo("astronaut")).resize((240, 320))
    data = exif_jpeg(upright.transpose(stored), orientation)
    got = _open(make_thumbnail(data, max_side=320, quality=95, fmt=fmt))
    assert got.size == (240, 320)
    diff = np.abs(np.asarray(got.convert("RGB"), np.float32) - np.asarray(upright, np.float32)).mean()
    assert diff < 6.0, diff
    # The stored (sideways) pixels are far from the upright reference: the check above is not vacuous.
    sideways = upright.transpose(stored).resize((240, 320))
    assert np.abs(np.asarray(sideways, np.float32) - np.asarray(upright, np.float32)).mean() > 5 * diff


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
@pytest.mark.parametrize("size, max_side, expected", [
    ((1000, 600), 256, (256, 154)),  # landscape: the longer side bounded, the ratio kept
    ((600, 1000), 256, (154, 256)),  # portrait
    ((4000, 3000), 384, (384, 288)),  # camera-sized, through the reduced JPEG decode
    ((2000, 120), 384, (384, 23)),  # thin (the server refuses over 20:1)
    ((100, 50), 384, (100, 50)),  # smaller than max_side: never upscaled
    ((384, 200), 384, (384, 200)),  # exactly max_side: unchanged
])  # fmt: skip
def test_longer_side_is_bounded_and_small_images_are_not_upscaled(fmt, size, max_side, expected):
    src = Image.fromarray(photo("coffee")).resize(size)
    for src_fmt in ("JPEG", "PNG"):
        got = _open(make_thumbnail(encode(src, src_fmt), max_side=max_side, quality=80, fmt=fmt))
        assert got.size == expected
    assert thumbnail_size(*size, max_side) == expected


def test_downscaled_thumbnail_looks_like_the_original():
    src = Image.fromarray(photo("chelsea"))  # 451 x 300
    got = _open(make_thumbnail(encode(src, "PNG"), max_side=226, quality=95, fmt="webp"))
    assert got.size == (226, 150)
    ref = src.resize(got.size, Image.LANCZOS)
    assert np.abs(np.asarray(got, np.float32) - np.asarray(ref, np.float32)).mean() < 3.0


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_transparency_is_composited_on_white(fmt):
    rgba = np.zeros((64, 96, 4), np.uint8)  # transparent (black if alpha were dropped)
    rgba[16:48, 24:72] = (200, 30, 30, 255)  # an opaque red block
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    got = np.asarray(_open(make_thumbnail(data, max_side=256, quality=95, fmt=fmt)).convert("RGB"), np.float32)
    assert got.shape == (64, 96, 3)
    assert got[:8].min() > 245  # the transparent border is white, not black
    assert np.abs(got[24:40, 36:60] - np.array([200, 30, 30])).max() < 20  # the opaque block keeps its colour
    # a palette image with a transparent colour index too (as a GIF or an indexed PNG has)
    pal = Image.fromarray(rgba, "RGBA").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.info["transparency"] = pal.getpixel((0, 0))
    got = np.asarray(_open(make_thumbnail(encode(pal, "PNG"), max_side=256, quality=95, fmt=fmt)).convert("RGB"))
    assert got[:8].min() > 245


def test_small_drawings_are_kept_exactly_small_photos_lossy():
    # A drawing (few colours, flat areas): the model enlarges it, so it is kept pixel for pixel.
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[8:56, 8:56] = (250, 200, 0, 255)
    rgba[20:30, 20:44] = (30, 30, 30, 255)
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    thumb = make_thumbnail(data, fmt="webp")
    assert thumb[12:16] == b"VP8L" and len(thumb) <= LOSSLESS_MAX_BYTES  # WebP lossless
    expected = np.asarray(Image.fromarray(rgba, "RGBA").convert("RGB")).copy()
    expected[rgba[..., 3] == 0] = 255
    assert np.array_equal(np.asarray(_open(thumb).convert("RGB")), expected)
    # A small photo: exact would cost more than LOSSLESS_MAX_BYTES, so lossy.
    small = encode(Image.fromarray(photo("coffee")).resize((200, 133)), "JPEG", quality=40)
    thumb = make_thumbnail(small, fmt="webp")
    assert thumb[12:16] == b"VP8 " and _open(thumb).size == (200, 133)
    # A downscaled image is always lossy, in the lossy format; a small drawing is kept exact whatever it is.
    assert make_thumbnail(encode(photo("coffee"), "PNG"), max_side=256, fmt="webp")[12:16] == b"VP8 "
    assert _open(make_thumbnail(encode(photo("coffee"), "PNG"), max_side=256, fmt="jpeg")).format == "JPEG"
    assert make_thumbnail(data, fmt="jpeg")[12:16] == b"VP8L"
    assert _open(make_thumbnail(small, fmt="jpeg")).format == "JPEG"
    # A photo too large to try lossless (more than LOSSLESS_MAX_PIXELS) is never encoded twice: lossy at once.
    big = encode(Image.fromarray(photo("coffee")).resize((300, 250)), "PNG")
    assert _open(make_thumbnail(big, max_side=384, fmt="jpeg")).format == "JPEG"


def _reason(call: object) -> str:
    with pytest.raises(LookalikeError) as info:
        call()  # type: ignore[operator]
    return info.value.reason


def test_undecodable_input_raises_what_the_embedder_raises():
    good = encode(photo("coffee"), "JPEG", quality=90)
    inputs = {
        "truncated": good[: len(good) // 2],
        "garbage": b"this is not an image, just some bytes" * 10,
        "header only": good[:200],
    }
    for what, data in inputs.items():
        expected = _reason(lambda data=data: decode_image(data, **LIMITS))
        got = _reason(lambda data=data: make_thumbnail(data, **LIMITS))
        assert got == expected == "IMAGE_UNDECODABLE", what
    assert _reason(lambda: make_thumbnail(b"")) == "IMAGE_MISSING"


def test_limits_are_the_embedders_checked_from_the_header():
    big = encode(Image.new("L", (3000, 3000)), "PNG")
    assert _reason(lambda: make_thumbnail(big, max_bytes=1 << 24, max_pixels=1_000_000)) == "IMAGE_TOO_LARGE"
    assert _reason(lambda: make_thumbnail(big, max_bytes=1000, max_pixels=1 << 24)) == "IMAGE_TOO_LARGE"
    thin = encode(Image.new("L", (2000, 10)), "PNG")
    assert _reason(lambda: make_thumbnail(thin, max_aspect_ratio=50)) == "IMAGE_SHAPE_INVALID"


def test_bad_settings_are_refused():
    data = encode(photo("coffee"), "PNG")
    with pytest.raises(ValueError, match="format"):
        make_thumbnail(data, fmt="gif")
    with pytest.raises(ValueError, match="max_side"):
        make_thumbnail(data, max_side=0)
    with pytest.raises(ValueError, match="quality"):
        make_thumbnail(data, quality=0)


@pytest.mark.slow
def test_thumbnails_re_embed_like_their_originals():
    """The module's constants, the real default model, the tests' real photos (as JPEG uploads)."""
    from lookalike.server.core.embedding.default_model import default_model_path
    from lookalike.server.core.embedding.embedder import Embedder

    originals = [encode(photo(name), "JPEG", quality=95) for name in PHOTO_NAMES]
    thumbs = [make_thumbnail(data) for data in originals]
    embedder = Embedder(default_model_path(), device="cpu", max_wait_s=0.0)
    try:
        cos = np.einsum("ij,ij->i", embedder.embed(originals), embedder.embed(thumbs))
    finally:
        embedder.close()
    assert np.median(cos) >= 0.995, dict(zip(PHOTO_NAMES, cos.round(4).tolist(), strict=True))
    assert sum(map(len, thumbs)) < sum(map(len, originals))


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.parametrize("size", [(640, 480), (481, 997), (417, 300)])
def test_the_downscale_is_pillows_bicubic_within_three_levels(size, path, monkeypatch):
    # The pixels reach each kernel as they lie in the decoded image: a wrong row stride, channel order or
    # shape would be far from Pillow's own antialiased bicubic of the same image. "torch": the fallback
    # where the CPU has no AVX-512 VBMI (the native kernel declines).
    from lookalike.server.core.embedding import thumbnails

    if path == "torch":
        monkeypatch.setattr(thumbnails, "_native_downscale", lambda img, size: None)
    img = Image.fromarray(photo("astronaut")).convert("RGB").resize(size)
    target = thumbnail_size(*size, THUMBNAIL_MAX_SIDE)
    out = thumbnails.downscale(img, target)
    if path == "native" and _native.resample_kernel(size[0], target[0]) == "avx512vbmi":
        assert out.mode == "RGBX"  # the native kernel's own bytes, not torch's or Pillow's
    ours = np.asarray(out.convert("RGB"), np.int16)
    ref = np.asarray(img.resize(target, Image.Resampling.BICUBIC), np.int16)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 3 and np.abs(ours - ref).mean() < 0.25  # a wrong layout: tens of levels
