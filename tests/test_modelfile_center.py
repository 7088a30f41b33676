"""A model file's domain centre: stored in its metadata, validated, applied after L2-normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lookalike.modelfile import EmbedderMeta, ModelFileError, load_embedder, output_vectors, save_embedder, with_center


def test_output_vectors_match_a_naive_computation() -> None:
    rng = np.random.default_rng(0)
    y = rng.standard_normal((5, 8)).astype(np.float32) * 3 + 2  # a shared offset, as a domain gives
    c = rng.standard_normal(8) * 0.05
    plain = EmbedderMeta("m", 8)
    centred = EmbedderMeta("m", 8, center=tuple(c))
    u = y / np.linalg.norm(y, axis=1, keepdims=True)
    np.testing.assert_allclose(output_vectors(y, plain), u, rtol=1e-6)
    v = u - c
    np.testing.assert_allclose(output_vectors(y, centred), v / np.linalg.norm(v, axis=1, keepdims=True), rtol=1e-5)
    assert output_vectors(y, centred).dtype == np.float32


def test_the_centre_round_trips_and_a_plain_file_keeps_the_old_json() -> None:
    plain = EmbedderMeta("m", 3)
    assert "center" not in json.loads(plain.to_json())  # servers that predate centres still read plain files
    meta = EmbedderMeta("m", 3, center=(0.1, -0.2, 0.3))
    back = EmbedderMeta.from_json(meta.to_json())
    assert back == meta and back.center == (0.1, -0.2, 0.3)
    assert EmbedderMeta.from_json(json.dumps({**json.loads(plain.to_json()), "center": None})).center is None


@pytest.mark.parametrize(
    ("center", "message"),
    [((0.1, 0.2), "3 finite numbers"), ((0.1, float("nan"), 0.0), "3 finite numbers"), ((1.0, 0.0, 0.0), "norm")],
)
def test_a_wrong_centre_is_refused_with_what_to_fix(center: tuple[float, ...], message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        EmbedderMeta("m", 3, center=center)


def test_with_center_rewrites_the_metadata_and_keeps_the_weights(tmp_path) -> None:
    module = torch.jit.script(torch.nn.Linear(4, 3).eval())
    path = save_embedder(module, tmp_path / "m.pt", EmbedderMeta("m", 3, input_size=4, resize_size=4))
    with_center(path, np.array([0.2, 0.0, -0.1]))
    loaded, meta = load_embedder(path)
    assert meta.center == pytest.approx((0.2, 0.0, -0.1)) and meta.model_name == "m"
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded(x), module(x))
    with_center(path, None)
    assert load_embedder(path)[1].center is None
