"""lookalike._native.downscale_rgbx (the thumbnail's downscale) against Pillow's own antialiased bicubic, and its
AVX-512 path against its scalar reference, on real photos."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from photos import PHOTO_NAMES, photo
from PIL import Image

from lookalike import _native

FAST = _native.resample_kernel(640, 416) == "avx512vbmi"
SHAPES = [(640, 480, 416, 312), (480, 640, 312, 416), (1000, 750, 416, 312), (417, 313, 416, 312),
          (512, 512, 300, 200), (640, 480, 640, 200), (640, 480, 200, 480), (33, 21, 7, 5), (5, 3, 1, 1)]  # fmt: skip


def rgb(name: str, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(photo(name)).convert("RGB").resize(size, Image.Resampling.LANCZOS)


def native(img: Image.Image, size: tuple[int, int], simd: str | None = None) -> np.ndarray:
    out = _native.downscale_rgbx(img.tobytes("raw", "RGBX"), img.width, img.height, *size, simd=simd)
    return np.frombuffer(out, np.uint8).reshape(size[1], size[0], 4)[..., :3]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}x{}-{}x{}".format(*s))
def test_within_two_levels_of_pillows_bicubic(shape):
    w, h, ow, oh = shape
    diffs = []
    for name in PHOTO_NAMES[:4]:
        img = rgb(name, (w, h))
        ref = np.asarray(img.resize((ow, oh), Image.Resampling.BICUBIC), np.int16)
        for simd in (None, "scalar"):
            d = np.abs(native(img, (ow, oh), simd).astype(np.int16) - ref)
            assert d.max() <= 2, (name, simd, int(d.max()))  # a wrong tap, weight or lane: tens of levels
            diffs.append(d.mean())
    assert np.mean(diffs) < 0.05  # 16-bit weights against Pillow's 22-bit: a level off here and there


@pytest.mark.skipif(not FAST, reason="no AVX-512 VBMI on this CPU: only the scalar code runs")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}x{}-{}x{}".format(*s))
def test_the_avx512_path_equals_the_scalar_reference(shape):
    w, h, ow, oh = shape
    for name in PHOTO_NAMES:
        img = rgb(name, (w, h))
        np.testing.assert_array_equal(native(img, (ow, oh)), native(img, (ow, oh), "scalar"))


def test_threads_at_once_get_what_one_thread_gets():
    imgs = [rgb(name, (640, 480)) for name in PHOTO_NAMES]
    alone = [native(img, (416, 312)) for img in imgs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda img: native(img, (416, 312)), imgs * 4))
    for k, got in enumerate(together):
        np.testing.assert_array_equal(got, alone[k % len(imgs)])


def test_only_fast_declines_instead_of_running_the_scalar_code():
    img = rgb("astronaut", (640, 480))
    assert _native.downscale_rgbx(img.tobytes("raw", "RGBX"), 640, 480, 416, 312, simd="scalar", only_fast=True) is None
    wide = rgb("astronaut", (8000, 20))  # 19x across: the taps of one output pixel span more than one window
    assert _native.resample_kernel(8000, 416) == "scalar"
    assert _native.downscale_rgbx(wide.tobytes("raw", "RGBX"), 8000, 20, 416, 1, only_fast=True) is None
    if FAST:
        assert _native.downscale_rgbx(img.tobytes("raw", "RGBX"), 640, 480, 416, 312, only_fast=True) is not None


def test_bad_input_is_refused_with_what_to_fix():
    px = bytes(4 * 6)
    with pytest.raises(ValueError, match="needs 32"):
        _native.downscale_rgbx(px, 4, 2, 2, 1)  # 24 bytes for 4x2 RGBX
    with pytest.raises(ValueError, match="out_width must be in 1"):
        _native.downscale_rgbx(px, 3, 2, 0, 1)
    with pytest.raises(ValueError, match="simd must be"):
        _native.downscale_rgbx(px, 3, 2, 2, 1, simd="sse9")
    with pytest.raises(TypeError, match="C-contiguous"):
        _native.downscale_rgbx(np.zeros((2, 3, 4), np.uint8)[:, ::2], 2, 2, 1, 1)


def test_an_image_is_read_in_place_as_its_bytes_would_be():
    img = rgb("coffee", (640, 480))
    assert _native.downscale_rgbx(img, 640, 480, 416, 312) == _native.downscale_rgbx(
        img.tobytes("raw", "RGBX"), 640, 480, 416, 312
    )
    with pytest.raises(ValueError, match="Arrow export holds 1228800 bytes"):
        _native.downscale_rgbx(img, 640, 479, 416, 312)  # sizes that are not the image's
    with pytest.raises(TypeError, match="4-byte pixels"):
        _native.downscale_rgbx(img.convert("L"), 640, 480, 416, 312)  # 1 byte a pixel


def test_a_large_image_falls_back_to_a_copy_of_its_rows():
    # Pillow keeps a large image's rows in several blocks and will not export them in place; the thumbnail's
    # downscale then hands the kernel a copy, with the same result.
    from lookalike.server.core.embedding.thumbnails import downscale

    big = rgb("rocket", (4200, 2800))
    with pytest.raises(ValueError):
        _native.downscale_rgbx(big, 4200, 2800, 1200, 800)
    want = _native.downscale_rgbx(big.tobytes("raw", "RGBX"), 4200, 2800, 1200, 800)
    if FAST:
        assert downscale(big, (1200, 800)).tobytes() == want


@pytest.mark.parametrize("shape", SHAPES[:5], ids=lambda s: "{}x{}-{}x{}".format(*s))
def test_the_same_bytes_as_torchs_uint8_kernel(shape):
    # torch's antialiased uint8 bicubic is Pillow-SIMD's arithmetic too (16-bit weights, horizontal pass first):
    # the thumbnail is the same whichever of the two the server runs, so fidelity measured with one holds for both.
    torch = pytest.importorskip("torch")
    w, h, ow, oh = shape
    for name in PHOTO_NAMES[:4]:
        img = rgb(name, (w, h))
        pixels = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).unsqueeze(0)
        ref = torch.nn.functional.interpolate(pixels, size=(oh, ow), mode="bicubic", antialias=True)[0]
        np.testing.assert_array_equal(native(img, (ow, oh)), ref.permute(1, 2, 0).numpy())
