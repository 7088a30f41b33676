"""Matching real photos over gRPC with the real default model."""

from __future__ import annotations

import numpy as np
import pytest
from photos import crop, encode, resize


def test_photo_matches_its_edits_more_than_other_photos(client, photos):
    cat = photos["chelsea"]
    edits = {
        "crop": encode(crop(cat, 0.7, 0.1)),
        "resize": encode(resize(cat, 0.4)),
        "jpeg_q20": encode(cat, quality=20),
        "png": encode(cat, "PNG"),
    }
    original = encode(cat)
    same = {name: client.match(original, data).similarity for name, data in edits.items()}
    different = [client.match(original, encode(photos[n])).similarity for n in ("coffee", "astronaut", "rocket")]
    assert min(same.values()) > max(different) + 0.3, (same, different)
    assert all(0.0 <= s <= 1.0 for s in [*same.values(), *different])


def test_match_is_symmetric_and_identical_images_score_one(client, photos):
    a, b = encode(photos["coffee"]), encode(photos["rocket"])
    ab, ba = client.match(a, b), client.match(b, a)
    assert ab.cosine == pytest.approx(ba.cosine, abs=1e-5)
    assert client.match(a, a).cosine == pytest.approx(1.0, abs=1e-5)
    assert ab.model == "efficientnet-lite0-imagenet"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_supported_format_embeds_like_the_jpeg(client, photos, fmt):
    arr = photos["astronaut"]
    params = {"lossless": True} if fmt == "WEBP" else {}
    r = client.match(encode(arr, "PNG"), encode(arr, fmt, **params))
    assert r.cosine > 0.9 if fmt == "GIF" else r.cosine > 0.98  # GIF is palette-quantised


def test_embed_returns_unit_vectors_in_request_order(client, photos):
    names = ["chelsea", "coffee", "rocket"]
    resp = client.embed([encode(photos[n]) for n in names])
    assert resp.dimension == 1280 and len(resp.embeddings) == 3
    vecs = np.array([e.values for e in resp.embeddings], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    single = np.array(client.embed([encode(photos["coffee"])]).embeddings[0].values, dtype=np.float32)
    np.testing.assert_allclose(vecs[1], single, atol=1e-4)  # same result batched or alone
    assert float(vecs[0] @ vecs[1]) < 0.5


def test_concurrent_matches_agree_with_sequential(client, photos):
    from concurrent.futures import ThreadPoolExecutor

    pairs = [(encode(photos[a]), encode(photos[b])) for a in ("chelsea", "coffee") for b in ("rocket", "camera", "cat")]
    sequential = [client.match(a, b).cosine for a, b in pairs]
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(lambda p: client.match(*p).cosine, pairs))
    np.testing.assert_allclose(concurrent, sequential, atol=1e-4)
