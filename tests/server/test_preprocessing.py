"""Preprocessing and decoding against naive references: resize modes, pixel modes, EXIF, limits, memory.

No server here: the functions the server and the trainer share (``lookalike.modelfile``) and the
server's decoder (``lookalike.server.core.embedding.images``), each checked against a slow, obvious version.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from photos import exif_jpeg
from PIL import Image

from lookalike.modelfile import (
    LEGACY_RESIZE_MODE,
    EmbedderMeta,
    letterbox_geometry,
    load_embedder,
    preprocess,
    preprocessing_identity,
    quiet_torchscript,
    save_embedder,
    to_rgb,
)


def _photo(name: str = "chelsea") -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]))


def _meta(mode: str, size: int = 32, resize: int = 37) -> EmbedderMeta:
    return EmbedderMeta(model_name="t", output_dim=4, input_size=size, resize_size=resize, resize_mode=mode)


def _normalise(arr_hwc: np.ndarray, meta: EmbedderMeta) -> np.ndarray:
    x = (arr_hwc.astype(np.float32) / 255.0 - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return x.transpose(2, 0, 1)


def naive_center_crop(img: Image.Image, meta: EmbedderMeta) -> np.ndarray:
    """The original recipe: resize the whole image (shorter side), then cut the centre."""
    size, (w, h) = meta.input_size, img.size
    scale = meta.resize_size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    big = img.convert("RGB").resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return _normalise(np.asarray(big.crop((left, top, left + size, top + size))), meta)


def naive_letterbox(img: Image.Image, meta: EmbedderMeta) -> np.ndarray:
    """Pixel by pixel: inside the centred content box the resized image, outside it the mean (0)."""
    size, (w, h) = meta.input_size, img.size
    scale = size / max(w, h)
    nw, nh = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    content = np.asarray(img.convert("RGB").resize((nw, nh), Image.BILINEAR, reducing_gap=3.0), np.float64)
    left, top = (size - nw) // 2, (size - nh) // 2
    out = np.zeros((3, size, size), np.float32)
    for y in range(size):
        for x in range(size):
            if top <= y < top + nh and left <= x < left + nw:
                for c in range(3):
                    v = content[y - top, x - left, c] / 255.0
                    out[c, y, x] = (v - meta.mean[c]) / meta.std[c]
    return out


@pytest.mark.parametrize("shape", [(451, 300), (300, 451), (64, 64), (100, 7), (7, 100), (33, 31)])
def test_letterbox_matches_the_naive_reference(shape):
    img, meta = _photo().resize(shape), _meta("letterbox")
    got, want = preprocess(img, meta), naive_letterbox(img, meta)
    assert got.shape == (3, 32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    nw, nh, left, top = letterbox_geometry(*shape, 32)
    assert max(nw, nh) == 32 and (left == 0 or top == 0)


def test_letterbox_keeps_the_whole_image_and_its_shape():
    """A wide image: the padding rows are exactly the mean (0), the content is not distorted."""
    meta = _meta("letterbox", size=64, resize=64)
    out = preprocess(Image.new("RGB", (200, 100), (255, 0, 0)), meta)
    assert np.all(out[:, :16] == 0) and np.all(out[:, 48:] == 0)  # 64 x 32 content, centred
    assert np.allclose(out[0, 16:48], (1.0 - meta.mean[0]) / meta.std[0])


@pytest.mark.parametrize("shape", [(451, 300), (3000, 2000), (100, 37), (700, 5000), (512, 512)])
def test_center_crop_resizes_only_the_box_but_gives_the_same_pixels(shape):
    img, meta = _photo().resize(shape), _meta(LEGACY_RESIZE_MODE, size=224, resize=256)
    got, want = preprocess(img, meta), naive_center_crop(img, meta)
    diff = np.abs(got - want) * 0.229 * 255  # in 8-bit grey levels
    assert float(diff.mean()) < 0.2 and float(diff.max()) <= 4.0


@pytest.mark.parametrize("mode", ["shorter_then_center_crop", "stretch", "letterbox"])
def test_thin_images_cost_no_more_than_normal_ones(mode):
    """Before: the centre crop scaled a 1 x 100000 image to 256 x 25.6M pixels (gigabytes)."""
    meta = _meta(mode, size=224, resize=256)
    for shape in [(1, 100_000), (100_000, 1)]:
        start = time.perf_counter()
        out = preprocess(Image.new("L", shape, 77), meta)
        assert out.shape == (3, 224, 224) and np.isfinite(out).all()
        assert time.perf_counter() - start < 2.0


def test_stretch_is_unchanged():
    img, meta = _photo(), _meta("stretch")
    want = _normalise(np.asarray(img.resize((32, 32), Image.BILINEAR)), meta)
    np.testing.assert_allclose(preprocess(img, meta), want, atol=1e-6)


# -- pixel modes -----------------------------------------------------------------------------


def test_sixteen_bit_and_float_grayscale_scale_by_their_range():
    gray = np.asarray(_photo().convert("L"))
    for deep in (Image.fromarray(gray.astype(np.uint16) * 257), Image.fromarray(gray.astype(np.float32) / 255)):
        got = np.asarray(to_rgb(deep))
        assert got.shape == (*gray.shape, 3)
        assert np.abs(got[..., 0].astype(int) - gray).max() <= 1, deep.mode
    values = (gray.astype(np.int32) - 128) * 1000  # mode I beyond 16 bits: scaled by its min..max
    want = (values - values.min()) * 255.0 / (values.max() - values.min())
    assert np.abs(np.asarray(to_rgb(Image.fromarray(values)))[..., 0] - want).max() <= 0.5 + 1e-6
    hdr = Image.fromarray(gray.astype(np.float32) * 4.0 + 10.0)  # float beyond [0, 1]: min..max
    assert np.asarray(to_rgb(hdr)).max() == 255 and np.asarray(to_rgb(hdr)).min() == 0
    nan = np.full((4, 4), np.nan, np.float32)
    assert np.asarray(to_rgb(Image.fromarray(nan))).max() == 0


def test_transparency_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    got = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert (got[:2] == (200, 0, 0)).all() and (got[2:] == 255).all()
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal)).tolist() == [[[255] * 3, [10, 20, 30]], [[10, 20, 30], [255] * 3]]


def test_trainer_loader_applies_exif_orientation():
    from lookalike.trainer.data.images import decode_image

    upright = _photo("astronaut").resize((120, 160))
    data = exif_jpeg(upright.transpose(Image.Transpose.ROTATE_90), 6)
    got = decode_image(data)
    assert got.size == (120, 160) and got.mode == "RGB"
    assert np.abs(np.asarray(got, np.float32) - np.asarray(upright, np.float32)).mean() < 4.0


def test_server_decoder_applies_exif_orientation_and_survives_broken_exif():
    from lookalike.server.core.embedding.images import decode_image

    upright = _photo("astronaut").resize((120, 160))
    data = exif_jpeg(upright.transpose(Image.Transpose.ROTATE_270), 8)
    got = decode_image(data, max_bytes=1 << 20, max_pixels=1 << 20)
    assert got.size == (120, 160)
    assert np.abs(np.asarray(got, np.float32) - np.asarray(upright, np.float32)).mean() < 4.0
    broken = bytearray(data)
    at = data.index(b"Exif\x00\x00")
    broken[at + 6 : at + 14] = b"\xff" * 8  # TIFF header of the EXIF block destroyed
    assert decode_image(bytes(broken), max_bytes=1 << 20, max_pixels=1 << 20).size in ((120, 160), (160, 120))


# -- limits ----------------------------------------------------------------------------------


def test_limits_are_checked_from_the_header_with_the_servers_numbers():
    from lookalike.server.core.embedding.images import decode_image
    from lookalike.server.core.errors import LookalikeError

    def png(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (w, h)).save(buf, "PNG")
        return buf.getvalue()

    with pytest.raises(LookalikeError) as info:
        decode_image(png(300, 300), max_bytes=1 << 20, max_pixels=50_000)
    assert info.value.reason == "IMAGE_TOO_LARGE" and "50000 pixels" in str(info.value.message)
    with pytest.raises(LookalikeError) as info:
        decode_image(png(1, 50), max_bytes=1 << 20, max_pixels=1 << 20, max_aspect_ratio=10)
    assert info.value.reason == "IMAGE_SHAPE_INVALID" and "10:1" in info.value.message
    assert decode_image(png(1, 10), max_bytes=1 << 20, max_pixels=1 << 20, max_aspect_ratio=10).size == (1, 10)


def test_jpeg_is_decoded_at_reduced_scale_when_the_model_needs_less():
    from lookalike.server.core.embedding.images import decode_image

    buf = io.BytesIO()
    _photo().resize((2400, 1600)).save(buf, "JPEG")
    img = decode_image(buf.getvalue(), max_bytes=1 << 24, max_pixels=1 << 24, draft_size=256)
    assert img.size == (600, 400)  # 1/4 scale: still >= 256 on both sides


def test_pixel_budget_bounds_concurrent_decodes():
    """Eight threads decoding 1 MP images under a 2.5 MP budget: never more than 2 at once."""
    from lookalike.server.core.embedding.images import PixelBudget, decode_image

    buf = io.BytesIO()
    _photo().resize((1000, 1000)).save(buf, "PNG")
    data, budget = buf.getvalue(), PixelBudget(2_500_000)
    threads = [
        threading.Thread(
            target=decode_image, args=(data,), kwargs={"max_bytes": 1 << 24, "max_pixels": 1 << 24, "budget": budget}
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.in_use == 0 and 1_000_000 <= budget.peak <= 2_000_000
    with budget.hold(5_000_000):  # larger than the budget alone: admitted, never deadlocked
        assert budget.in_use == 5_000_000


@pytest.mark.slow
def test_memory_is_returned_after_large_concurrent_decodes():
    """Before: freed decode buffers stayed in glibc's per-thread arenas (RSS grew by ~280 MB here)."""
    script = textwrap.dedent(
        """
        import io
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np
        from PIL import Image
        from lookalike.server.core.embedding.images import decode_image

        def rss():
            return int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20

        datas = []
        for i in range(16):
            a = np.zeros((3000, 4000), np.uint8); a[:] = i * 7; a[::7] = 200
            b = io.BytesIO(); Image.fromarray(a).convert('RGBA').save(b, 'PNG', compress_level=1)
            datas.append(b.getvalue())
        start = rss()
        def one(d):
            return decode_image(d, max_bytes=1 << 30, max_pixels=64_000_000).size
        with ThreadPoolExecutor(16) as pool:
            for _ in range(3):
                list(pool.map(one, datas))
        print(start, rss())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    start, end = (int(v) for v in out.stdout.split())
    assert end - start < 120, f"RSS grew from {start} MB to {end} MB"


# -- model files and the identity of their preprocessing -------------------------------------


def test_preprocessing_identity_names_what_changes_vectors():
    base = _meta("shorter_then_center_crop", 224, 256)
    ident = preprocessing_identity(base)
    json.dumps(ident)  # recorded per database as JSON
    assert {"resize_mode", "input_size", "resize_size", "mean", "std"} <= set(ident)
    for changed in (
        _meta("stretch", 224, 256),
        _meta("letterbox", 224, 256),
        _meta("shorter_then_center_crop", 224, 224),
        _meta("shorter_then_center_crop", 192, 256),
        EmbedderMeta(**{**base.__dict__, "mean": (0.5, 0.5, 0.5)}),
        EmbedderMeta(**{**base.__dict__, "std": (0.5, 0.5, 0.5)}),
    ):
        assert preprocessing_identity(changed) != ident, changed
    # What does not change vectors does not change the identity.
    assert preprocessing_identity(_meta("stretch", 224, 256)) == preprocessing_identity(_meta("stretch", 224, 300))
    assert preprocessing_identity(EmbedderMeta(**{**base.__dict__, "model_name": "other"})) == ident


def _channel_means() -> object:
    """A module mapping [N, 3, S, S] to the per-channel means [N, 3]: sees exactly the preprocessing."""
    import torch

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    return Mean()


def test_old_style_model_file_keeps_its_centre_crop(tmp_path: Path):
    """A file written before resize_mode had a say (no key, or the old default) still centre-crops."""
    import torch

    meta = _meta(LEGACY_RESIZE_MODE, 32, 37)
    path = save_embedder(_channel_means(), tmp_path / "new.pt", meta)
    raw = json.loads(meta.to_json())
    del raw["resize_mode"]  # as a hand-made or early file may lack it
    old = tmp_path / "old.pt"
    with quiet_torchscript():
        torch.jit.save(torch.jit.script(_channel_means()), str(old), _extra_files={"lookalike.json": json.dumps(raw)})
    _, old_meta = load_embedder(old)
    _, new_meta = load_embedder(path)
    assert old_meta.resize_mode == new_meta.resize_mode == LEGACY_RESIZE_MODE
    img = _photo().resize((120, 60))
    np.testing.assert_allclose(preprocess(img, old_meta), naive_center_crop(img, old_meta), atol=0.05)
    assert preprocessing_identity(old_meta) == preprocessing_identity(meta)


def test_default_model_cache_name_follows_its_preprocessing():
    """Changing the shipped resize policy must not silently reuse a cache built under the old one."""
    import dataclasses

    from lookalike.server.core.embedding.default_model import cache_file_name, default_meta

    meta = default_meta()
    names = {cache_file_name(dataclasses.replace(meta, resize_mode=m)) for m in ("shorter_then_center_crop", "stretch")}
    assert len(names) == 2
    assert cache_file_name(meta) == cache_file_name(default_meta())  # stable between calls
    assert "efficientnet-lite0-imagenet-52bfc52c0772.pt" not in names  # the name before the recipe was hashed


def test_preprocessing_mismatch_names_the_difference_and_the_way_forward():
    from lookalike.modelfile import preprocessing_mismatch

    old = preprocessing_identity(_meta("shorter_then_center_crop", 224, 256))
    new = preprocessing_identity(_meta("stretch", 224, 256))
    assert preprocessing_mismatch(old, dict(old)) is None
    msg = preprocessing_mismatch(old, new, "database 'shop'")
    assert msg is not None and "resize_mode" in msg and "'stretch'" in msg and "--model" in msg and "re-embed" in msg
    assert "input_size" not in msg  # only what differs


def test_new_files_default_to_the_measured_whole_image_policy():
    """The measured winner (bench/PREPROCESSING.md) for new files; the missing key keeps its old meaning."""
    from lookalike.server.core.embedding.default_model import default_meta

    assert EmbedderMeta(model_name="n", output_dim=2).resize_mode == "stretch"
    assert default_meta().resize_mode == "stretch"
    raw = json.loads(EmbedderMeta(model_name="n", output_dim=2).to_json())
    del raw["resize_mode"]
    assert EmbedderMeta.from_json(json.dumps(raw)).resize_mode == LEGACY_RESIZE_MODE


@pytest.mark.parametrize(
    ("mode", "decoded"), [("stretch", (600, 450)), ("letterbox", (600, 450)), (LEGACY_RESIZE_MODE, (1200, 900))]
)
def test_embedder_decodes_jpegs_at_the_scale_its_resize_mode_needs(tmp_path: Path, monkeypatch, mode, decoded):
    """A 2400x1800 JPEG for a 224 px model, decoded keeping twice what the resize needs: stretch and
    letterbox need 2 x 224 on both sides (1/4 scale, 600x450: 16x fewer pixels to decode and resize);
    the centre crop needs 2 x 256 on its shorter side (1/2 scale, 1200x900)."""
    from lookalike.server.core.embedding import embedder as embedder_module

    meta = EmbedderMeta(model_name="means", output_dim=3, input_size=224, resize_size=256, resize_mode=mode)
    path = save_embedder(_channel_means(), tmp_path / "m.pt", meta)
    sizes: list[tuple[int, int]] = []
    real = embedder_module.decode_image

    def spy(*args: object, **kw: object) -> Image.Image:
        img = real(*args, **kw)
        sizes.append(img.size)
        return img

    monkeypatch.setattr(embedder_module, "decode_image", spy)
    buf = io.BytesIO()
    _photo().resize((2400, 1800)).save(buf, "JPEG", quality=90)
    embedder = embedder_module.Embedder(path, device="cpu")
    try:
        embedder.embed([buf.getvalue()])
    finally:
        embedder.close()
    assert sizes == [decoded]


@pytest.mark.parametrize("mode", ["stretch", "letterbox", LEGACY_RESIZE_MODE])
def test_normalisation_equals_the_textbook_formula(mode):
    """The fused normalisation is ``(pixel / 255 - mean) / std`` in channel-first order, to float32 rounding."""
    meta = EmbedderMeta(model_name="m", output_dim=3, input_size=64, resize_size=73, resize_mode=mode,
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # fmt: skip
    img = _photo("astronaut").resize((120, 90))
    got = preprocess(img, meta)
    if mode == "letterbox":
        nw, nh, left, top = letterbox_geometry(120, 90, 64)
        pixels = np.asarray(img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0), np.float64)
        want = np.zeros((3, 64, 64))
        want[:, top : top + nh, left : left + nw] = ((pixels / 255 - meta.mean) / meta.std).transpose(2, 0, 1)
    else:
        from lookalike.modelfile import _crop_box

        box = None if mode == "stretch" else _crop_box(120, 90, meta)
        gap = None if mode == "stretch" else 3.0
        pixels = np.asarray(img.resize((64, 64), Image.BILINEAR, box=box, reducing_gap=gap), np.float64)
        want = ((pixels / 255 - meta.mean) / meta.std).transpose(2, 0, 1)
    assert got.dtype == np.float32 and got.shape == (3, 64, 64) and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_draft_decoding_keeps_the_vectors_of_a_full_decode():
    """The draft keeps twice the pixels the resize needs, so stored vectors stay comparable (no pipeline bump).

    Decoding at exactly the needed scale moved 640x480 photos to cosine 0.9965; this asserts the
    0.999 tolerance the model's execution modes keep, on photos at three sizes."""
    from lookalike.server.core.embedding.default_model import default_model_path
    from lookalike.server.core.embedding.embedder import Embedder

    from tests.photos import PHOTO_NAMES, photo

    embedder = Embedder(default_model_path(), device="cpu", max_batch=4, model_workers=1)
    try:
        drafted = embedder._draft_size
        assert drafted == 2 * embedder.meta.input_size
        for size in [(640, 480), (1600, 1200), (4000, 3000)]:
            jpegs = []
            for name in PHOTO_NAMES:
                buf = io.BytesIO()
                Image.fromarray(photo(name)).resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
                jpegs.append(buf.getvalue())
            fast = embedder.embed(jpegs)
            embedder._draft_size = None
            try:
                full = embedder.embed(jpegs)
            finally:
                embedder._draft_size = drafted
            cosines = (fast * full).sum(axis=1)
            assert cosines.min() >= 0.999, (size, cosines.round(5))
            if size == (4000, 3000):  # and the draft happened: the decode was at most 1/4 of the pixels
                from lookalike.server.core.embedding.images import decode_image

                img = decode_image(jpegs[0], max_bytes=1 << 26, max_pixels=1 << 26, draft_size=drafted)
                assert img.size == (1000, 750)
    finally:
        embedder.close()
