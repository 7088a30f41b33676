"""The hostile-input image corpus through the real server over loopback gRPC (the default model).

Every case gets ``INVALID_ARGUMENT`` with a stable reason, or a vector that matches a plain
twin of the same picture (16-bit vs 8-bit, EXIF-rotated vs upright, ...), and the server keeps
answering correctly afterwards. The corpus is written by ``tests/hostile/make_corpus.py`` into
a temporary folder and read back, as a user's files would be.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hostile.make_corpus import (
    REASON_SHAPE,
    REASON_TOO_LARGE,
    Case,
    encode,
    photo,
    png_header_bomb,
    read_corpus,
    write_corpus,
)
from lookalike.client import ClientError
from PIL import Image

SERVER_MAX_PIXELS = 64_000_000  # ServerConfig's default, which the shared fixture uses


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("hostile")
    write_corpus(folder)
    return {c.name: c for c in read_corpus(folder)}


def _names(refused: bool) -> list[str]:
    from hostile.make_corpus import build_corpus

    return [c.name for c in build_corpus() if (c.reason is not None) == refused]


def _vector(client, data: bytes) -> np.ndarray:
    out = client.embed([data])
    return np.asarray(out.embeddings[0].values, np.float32)


@pytest.mark.parametrize("name", _names(refused=True))
def test_refused_with_a_stable_reason(client, corpus, photos, name):
    case = corpus[name]
    good = encode(Image.fromarray(photos["chelsea"]), "JPEG")
    start = time.perf_counter()
    with pytest.raises(ClientError) as info:
        client.match(good, case.data)
    e = info.value
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", case.reason), e.message
    assert e.metadata.get("field") == "image_b"
    assert "object at 0x" not in e.message and "Error" not in e.message  # no Python internals
    assert time.perf_counter() - start < 10.0  # refused from the header, not after decoding gigabytes


@pytest.mark.parametrize("name", _names(refused=False))
def test_odd_but_valid_images_get_the_right_vector(client, corpus, name):
    case = corpus[name]
    assert case.twin is not None
    v, twin = _vector(client, case.data), _vector(client, case.twin)
    similarity = float(v @ twin)
    assert similarity >= case.min_similarity, f"{name}: similarity {similarity:.3f} to its plain twin"


def test_too_large_messages_quote_the_servers_limit(client, corpus):
    """Pillow's own limit (178956970 / 89478485) must never reach the user; the server's must."""
    for name in ("bomb_png_50000x50000", "bomb_jpeg_50000x50000", "bomb_png_12000x12000"):
        with pytest.raises(ClientError) as info:
            client.embed([corpus[name].data])
        e = info.value
        assert e.reason == REASON_TOO_LARGE
        assert str(SERVER_MAX_PIXELS) in e.message, e.message
        assert "178956970" not in e.message and "89478485" not in e.message and "DOS" not in e.message
    with pytest.raises(ClientError) as info:  # between the server's limit and Pillow's warning
        client.embed([png_header_bomb(9000, 9000)])
    assert info.value.reason == REASON_TOO_LARGE and "9000x9000" in info.value.message


def test_thin_images_say_the_shape_limit(client, corpus):
    with pytest.raises(ClientError) as info:
        client.embed([corpus["thin_1x100000"].data])
    e = info.value
    assert e.reason == REASON_SHAPE and "1x100000" in e.message and "20:1" in e.message, e.message


def test_shape_limit_is_inclusive_and_moderate_strips_embed(client):
    """A 20:1 strip is still embedded (the limit is on the ratio, not on thinness); 21:1 is not."""
    v = _vector(client, encode(Image.new("RGB", (400, 20), (10, 200, 40)), "PNG"))
    assert np.isfinite(v).all() and abs(float(np.linalg.norm(v)) - 1.0) < 1e-3
    with pytest.raises(ClientError) as info:
        client.embed([encode(Image.new("RGB", (420, 20), (10, 200, 40)), "PNG")])
    assert info.value.reason == REASON_SHAPE


def test_exif_rotation_matches_upright_not_the_stored_pixels(client):
    """The rotated file must match the upright photo better than it matches its own raw pixels."""
    from hostile.make_corpus import exif_rotated

    upright = Image.fromarray(photo("astronaut")).resize((300, 400))
    rotated = _vector(client, exif_rotated(upright, 6))
    as_stored = _vector(client, encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92))
    plain = _vector(client, encode(upright, "JPEG", quality=92))
    assert float(rotated @ plain) >= 0.98
    assert float(rotated @ plain) > float(rotated @ as_stored) + 0.05


def test_server_keeps_serving_after_the_corpus(client, corpus, photos):
    """Every case in an Embed call with a good image: refused with its reason (the whole call) or
    embedded with it; then a plain Match still gives the same answer as before."""
    a, b = encode(Image.fromarray(photos["chelsea"]), "JPEG"), encode(Image.fromarray(photos["coffee"]), "JPEG")
    before = client.match(a, b).similarity
    alone = _vector(client, a)
    for case in corpus.values():
        if case.reason is None:
            out = client.embed([case.data, a])
            assert len(out.embeddings) == 2, case.name
            np.testing.assert_allclose(out.embeddings[1].values, alone, atol=1e-4, err_msg=case.name)
        else:
            try:
                client.embed([case.data, a])
            except ClientError as e:
                assert (e.code, e.reason, e.metadata.get("index")) == ("INVALID_ARGUMENT", case.reason, "0"), case.name
            else:
                pytest.fail(f"{case.name} was accepted; it should be refused with {case.reason}")
    assert client.match(a, b).similarity == pytest.approx(before, abs=1e-6)
    assert client.match(a, a).similarity == pytest.approx(1.0, abs=1e-4)
