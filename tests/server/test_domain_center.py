"""A model file with a domain centre: the server subtracts it from every vector, and databases know it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from durability_helpers import start
from lookalike.client import ClientError, LookalikeClient
from lookalike.server.core.embedding.model_identity import model_identity
from photos import PHOTO_NAMES, encode, photo

from lookalike.modelfile import EmbedderMeta, load_embedder, preprocess, save_embedder, with_center

DIM = 64


class Pooled(torch.nn.Module):
    """Colour statistics of a 4x4 grid through a fixed projection: cheap, deterministic, image-dependent."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)) + 3.0  # a shared offset


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    module = torch.jit.script(Pooled().eval())
    meta = EmbedderMeta("pooled", DIM, input_size=64, resize_size=64)
    plain = save_embedder(module, folder / "plain.pt", meta)
    centred = save_embedder(module, folder / "centred.pt", meta)
    raw = naive_raw(plain, [photo(n) for n in PHOTO_NAMES])
    center = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).mean(0)
    with_center(centred, center)
    return plain, centred, center


def naive_raw(path, arrays) -> np.ndarray:
    from PIL import Image

    module, meta = load_embedder(path)
    x = torch.from_numpy(np.stack([preprocess(Image.fromarray(a), meta) for a in arrays]))
    with torch.no_grad():
        return module(x).numpy().astype(np.float64)


def served(model, data, arrays) -> tuple[np.ndarray, float]:
    """Embed and Match of a server with ``model``: its vectors and the cosine of the first two images."""
    server = start(data, model=model)
    try:
        with LookalikeClient(server.address) as c:
            vectors = np.array([e.values for e in c.embed([encode(a, "PNG") for a in arrays]).embeddings])
            return vectors, c.match(encode(arrays[0], "PNG"), encode(arrays[1], "PNG")).cosine
    finally:
        server.stop(0)


def test_the_server_serves_centred_vectors(tmp_path, model_files) -> None:
    plain, centred, center = model_files
    arrays = [photo(n) for n in PHOTO_NAMES[:4]]
    unit, plain_cosine = served(plain, tmp_path / "a", arrays)
    raw = naive_raw(plain, arrays)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=2e-3)
    got, cosine = served(centred, tmp_path / "b", arrays)
    expected = (unit - center) / np.linalg.norm(unit - center, axis=1, keepdims=True)  # the same run, centred
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - unit).max() > 0.1  # the centre really moved them
    assert cosine == pytest.approx(float(expected[0] @ expected[1]), abs=1e-5)
    assert abs(cosine - plain_cosine) > 0.05  # and changed how alike two photos look


def test_a_database_of_plain_vectors_is_refused_by_the_centred_model(tmp_path, model_files) -> None:
    plain, centred, _ = model_files
    a, b = (model_identity(*load_embedder(p)) for p in (plain, centred))
    assert a["preprocessing"] == b["preprocessing"] and a["digest"] != b["digest"]
    data = tmp_path / "data"
    server = start(data, model=plain)
    with LookalikeClient(server.address) as c:
        c.create_database("shop")
        c.set_image("shop", "a", image=encode(photo("coffee")))
    server.stop(0)
    server = start(data, model=centred)
    try:
        with LookalikeClient(server.address) as c, pytest.raises(ClientError) as err:
            c.search("shop", image=encode(photo("coffee")))
        assert err.value.code == "FAILED_PRECONDITION" and err.value.reason == "MODEL_MISMATCH"
    finally:
        server.stop(0)
