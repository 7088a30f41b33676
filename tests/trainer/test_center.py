"""The domain centre an export stores: the mean of its own plain vectors over training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolder import write_image_folder
from lookalike.trainer.center import CenterSet, center_export, domain_center
from lookalike.trainer.data.sources import SubsetSource, open_source
from lookalike.trainer.eval.embedders import ModelFileEmbedder
from PIL import Image

from lookalike.modelfile import EmbedderMeta, load_embedder, preprocess, save_embedder


class Pooled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)) + 2.0


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    meta = EmbedderMeta("pooled", 32, input_size=48, resize_size=48)
    return save_embedder(torch.jit.script(Pooled().eval()), tmp_path / "m.pt", meta)


def naive_unit(model_file: Path, images: list[Image.Image]) -> np.ndarray:
    module, meta = load_embedder(model_file)
    with torch.no_grad():
        y = module(torch.from_numpy(np.stack([preprocess(im, meta) for im in images]))).numpy().astype(np.float64)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def test_the_draw_is_seeded_capped_and_off_at_zero(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", 12)
    source = SubsetSource(open_source(str(tmp_path / "imgs")), list(range(2, 12)))  # a training part
    a, b = CenterSet.draw(source, 4, seed=1), CenterSet.draw(source, 4, seed=1)
    assert a is not None and b is not None and a.indices == b.indices and len(set(a.indices)) == 4
    assert all(0 <= i < len(source) for i in a.indices)
    assert CenterSet.draw(source, 100, seed=1).indices == list(range(10))  # capped at the training part
    assert CenterSet.draw(source, 0, seed=1) is None


def test_the_centre_is_the_mean_of_the_plain_vectors_and_is_then_served(tmp_path: Path, model_file: Path) -> None:
    paths = write_image_folder(tmp_path / "imgs", 10)
    images = [Image.open(p).convert("RGB") for p in paths]
    expected = naive_unit(model_file, images).mean(0)
    np.testing.assert_allclose(domain_center(model_file, images), expected, atol=1e-6)

    source = open_source(str(tmp_path / "imgs"))
    assert center_export(model_file, CenterSet(source, list(range(10)))) == 10
    center = np.asarray(load_embedder(model_file)[1].center)
    np.testing.assert_allclose(center, expected, atol=1e-6)
    unit = naive_unit(model_file, images[:3])
    want = (unit - center) / np.linalg.norm(unit - center, axis=1, keepdims=True)
    np.testing.assert_allclose(ModelFileEmbedder(model_file).embed(images[:3]), want, atol=1e-5)
    with pytest.raises(ValueError, match="already has a domain centre"):
        domain_center(model_file, images)


def test_fewer_than_two_readable_images_leave_the_file_plain(tmp_path: Path, model_file: Path) -> None:
    paths = write_image_folder(tmp_path / "imgs", 3)
    for p in paths[1:]:
        p.write_bytes(b"not an image")
    assert center_export(model_file, CenterSet(open_source(str(tmp_path / "imgs")), [0, 1, 2])) == 0
    assert load_embedder(model_file)[1].center is None


def test_the_self_check_scores_plain_vectors_whatever_the_centre(tmp_path: Path, model_file: Path) -> None:
    from lookalike.trainer.selfcheck import make_check_set, run_check

    paths = write_image_folder(tmp_path / "imgs", 8)
    check = make_check_set([Image.open(p).convert("RGB") for p in paths], views=2)
    plain = run_check(model_file, check)
    assert center_export(model_file, CenterSet(open_source(str(tmp_path / "imgs")), list(range(8)))) == 8
    assert run_check(model_file, check)["score"] == pytest.approx(plain["score"], abs=1e-9)
    centred = ModelFileEmbedder(model_file).embed(check.originals)
    assert not np.allclose(centred, ModelFileEmbedder(model_file, plain=True).embed(check.originals), atol=1e-3)


def test_a_negative_centre_count_is_refused_naming_the_option() -> None:
    from lookalike.trainer.config import load_config

    with pytest.raises(ValueError, match=r"export.center_images must be >= 0, got -1"):
        load_config(["finetune"], ["export.center_images=-1"]).validate()
    assert load_config(["finetune"], []).export.center_images == 128
