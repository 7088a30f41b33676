"""``lookalike eval``: metrics against a naive reference, Fashion-MNIST reader, CLI on real photos."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolder import write_image_folder
from lookalike.trainer.eval import fashion_mnist as fm
from lookalike.trainer.eval.embedders import PixelEmbedder, open_embedder
from lookalike.trainer.eval.metrics import duplicate_recall, retrieval_metrics
from lookalike.trainer.eval.near_dup import TRANSFORMS, near_duplicate_recall
from lookalike.trainer.eval_cli import main
from lookalike.trainer.export import export_embedder
from PIL import Image
from torch import nn


def naive_metrics(q: np.ndarray, ql: np.ndarray, g: np.ndarray, gl: np.ndarray, k: int, exclude_self: bool) -> dict:
    """Straight transcription of the definitions, one query at a time."""
    knn1 = knnk = ap_sum = r1 = rk = 0.0
    for i in range(len(q)):
        sims = g @ q[i]
        idx = [j for j in np.argsort(-sims, kind="stable") if not (exclude_self and j == i)]
        knn1 += gl[idx[0]] == ql[i]
        votes: dict[int, float] = {}
        for j in idx[:k]:
            votes[int(gl[j])] = votes.get(int(gl[j]), 0.0) + float(np.exp(sims[j] / 0.07))
        knnk += max(votes, key=votes.get) == ql[i]
        rel = [gl[j] == ql[i] for j in idx]
        hits, precisions = 0, []
        for rank, r in enumerate(rel, start=1):
            if r:
                hits += 1
                precisions.append(hits / rank)
        ap_sum += float(np.mean(precisions)) if precisions else 0.0
        r1 += rel[0]
        rk += any(rel[:k])
    n = len(q)
    return {"knn@1": knn1 / n, f"knn@{k}": knnk / n, "mAP": ap_sum / n, "recall@1": r1 / n, f"recall@{k}": rk / n}


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_metrics_match_the_naive_definitions(exclude_self: bool) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16))
    gl = rng.integers(0, 4, size=300)
    g = unit_rows(centers[gl] + rng.normal(scale=1.5, size=(300, 16)))
    if exclude_self:
        q, ql = g, gl
    else:
        ql = rng.integers(0, 4, size=70)
        q = unit_rows(centers[ql] + rng.normal(scale=1.5, size=(70, 16)))
    got = retrieval_metrics(q, ql, g, gl, knn_k=(1, 5), recall_k=(1, 5), exclude_self=exclude_self)
    want = naive_metrics(q, ql, g, gl, 5, exclude_self)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key
    assert 0.3 < got["knn@1"] < 1.0  # the data is neither trivial nor random


def test_duplicate_recall_finds_the_original_row() -> None:
    index = unit_rows(np.eye(5) + 0.01)
    query = index[[3, 1]] + 0.001
    assert duplicate_recall(query, index, np.array([3, 1]), (1,)) == {"recall@1": 1.0}
    assert duplicate_recall(query, index, np.array([0, 0]), (1, 5)) == {"recall@1": 0.0, "recall@5": 1.0}


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files_are_read(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(6) % 10)
    pixels, labels = fm.load_arrays("test", tmp_path)
    assert np.array_equal(pixels, images) and list(labels) == [0, 1, 2, 3, 4, 5]
    data = fm.load_split("test", tmp_path, limit=4)
    assert len(data) == 4 and data.images[0].mode == "L" and data.classes[0] == "T-shirt/top"
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        fm.load_arrays("train", tmp_path)


@pytest.mark.skipif(not (fm.DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist")
def test_the_installed_fashion_mnist_has_ten_balanced_classes() -> None:
    pixels, labels = fm.load_arrays("test")
    assert pixels.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10


def test_near_duplicate_transforms_are_seeded_and_keep_images_valid() -> None:
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(60, 80, 3), dtype=np.uint8))
    for name, transform in TRANSFORMS.items():
        a = transform(img, np.random.default_rng(5))
        b = transform(img, np.random.default_rng(5))
        assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b)), name
    with pytest.raises(ValueError, match="unknown near-duplicate transform"):
        near_duplicate_recall(PixelEmbedder(16), [img, img], transforms=["rotate"])


class TinyEncoder(nn.Module):
    """Random conv features: enough to exercise the model-file path of the evaluation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 24, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))  # [N, 24]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    write_image_folder(root, 30, labelled=True, classes=("chelsea", "coffee", "astronaut"))
    (root / "coffee" / "broken.jpg").write_text("not a photo")
    return root


def test_eval_cli_compares_pixels_and_a_model_file(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = export_embedder(TinyEncoder(), tmp_path / "tiny_export.pt", input_size=32, mean=(0.5,) * 3,
                            std=(0.5,) * 3, model_name="tiny-random")  # fmt: skip
    out = tmp_path / "eval.json"
    argv = ["--model", "pixels", "--model", str(model), "--data", str(labelled), "--near-dup", "--near-dup-n", "10",
            "--knn-k", "1,5", "--recall-k", "1,5", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "gallery 30 images, leave-one-out, 3 classes" in captured.out
    assert "| pixels |" in captured.out and "| tiny-random |" in captured.out
    assert "skipped 1 unreadable" in captured.err
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == ["pixels", "tiny-random"] and results[1]["dim"] == 24
    for r in results:
        assert 0.0 <= r["mAP"] <= 1.0 and r["recall@5"] >= r["recall@1"]
        assert set(r["near_dup"]) == set(TRANSFORMS)
    assert results[0]["near_dup"]["jpeg"]["recall@1"] >= 0.9  # a re-encoded copy is still the nearest pixels


def test_eval_cli_query_folder_must_use_gallery_classes(labelled: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    write_image_folder(tmp_path / "q", 3, labelled=True, classes=("rocket",))
    assert main(["--model", "pixels", "--data", str(labelled), "--query", str(tmp_path / "q")]) == 2
    assert "classes ['rocket'] that the gallery does not have" in capsys.readouterr().err
    write_image_folder(tmp_path / "q2", 4, labelled=True, classes=("coffee", "chelsea"), seed=9)
    assert main(["--model", "pixels", "--data", str(labelled), "--query", str(tmp_path / "q2"), "--no-map"]) == 0
    assert "4 queries" in capsys.readouterr().out


def test_eval_cli_rejects_a_file_that_is_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     labelled: Path) -> None:  # fmt: skip
    bogus = tmp_path / "x.pt"
    bogus.write_bytes(b"nope")
    assert main(["--model", str(bogus), "--data", str(labelled)]) == 2
    assert "not a TorchScript file" in capsys.readouterr().err


def test_resize_size_shows_the_model_the_whole_image(labelled: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Equal preprocessing for a fair comparison: ``--resize-size`` = input size means no crop."""
    model = export_embedder(TinyEncoder(), tmp_path / "t.pt", input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                            model_name="tiny", resize_mode="shorter_then_center_crop")  # fmt: skip
    cropped, whole = open_embedder(str(model)), open_embedder(str(model), resize_size=32)
    assert (cropped.meta.input_size, cropped.meta.resize_size) == (32, 37)
    assert (whole.meta.input_size, whole.meta.resize_size) == (32, 32) and whole.name.endswith("@32/32")
    img = Image.new("RGB", (74, 74), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 74, 2))  # a white band that the centre crop (37 -> 32) cuts away
    a, b, c = cropped.embed([img]), whole.embed([img]), cropped.embed([img.crop((0, 2, 74, 74))])
    assert not np.allclose(a, b, atol=1e-4)
    assert np.allclose(a, cropped.embed([Image.new("RGB", (74, 74), (0, 0, 0))]), atol=1e-5)
    assert not np.allclose(b, c, atol=1e-4)
    assert main(["--model", str(model), "--data", str(labelled), "--input-size", "32", "--resize-size", "16"]) == 2
    assert "must be >= it" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_is_built_into_the_cache_and_evaluated(labelled: Path, tmp_path: Path) -> None:
    embedder = open_embedder("default", cache_dir=tmp_path, input_size=96)
    assert list(tmp_path.rglob("*.pt")), "the default model file is cached"
    vectors = embedder.embed([Image.open(p) for p in sorted(labelled.rglob("*_000*.jpg"))])
    assert vectors.shape[1] == 1280 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
