"""Similarity tiers: the rules, calibration on real photos with the real default model, the hooks and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lookalike.trainer import calibration_images
from lookalike.trainer.tiers import (
    MIN_GAP,
    calibrate_model_file,
    calibrate_tiers,
    choose_tiers,
    distinct_images,
    duplicate_copy,
    module_embed,
    tier_report,
)
from photos import photo
from PIL import Image

from lookalike.cli import main as lookalike_main
from lookalike.modelfile import EmbedderMeta, load_embedder, save_embedder

# Real photos (scikit-image): calibration on these, the checks on two others it never sees.
CALIBRATION_PHOTOS = (
    "astronaut", "camera", "chelsea", "coins", "hubble_deep_field", "immunohistochemistry", "moon", "page",
    "text", "brick", "grass", "gravel", "clock", "colorwheel",
)  # fmt: skip
HELD_OUT_PHOTOS = ("coffee", "rocket")


def real(name: str) -> Image.Image:
    return Image.fromarray(photo(name))


class Pooled(torch.nn.Module):
    """A small random model: pooled pixels through a linear map (fast at any image size)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    meta = EmbedderMeta("pooled", 16, input_size=32, resize_size=32)
    return save_embedder(torch.jit.script(Pooled().eval()), tmp_path / "m.pt", meta)


@pytest.fixture(scope="module")
def default_model() -> tuple[object, EmbedderMeta]:
    from lookalike.server.core.embedding.default_model import default_model_path

    return load_embedder(default_model_path())


def strictly_decreasing(tiers: dict[str, float]) -> bool:
    return 1.0 >= tiers["duplicate"] > tiers["near"] > tiers["similar"] > -1.0


# ----------------------------------------------------------------------------- the rules


def test_the_rules_pick_the_stated_quantiles_when_the_samples_separate() -> None:
    rng = np.random.default_rng(0)
    dup, near, unrelated = rng.uniform(0.96, 1.0, 1000), rng.uniform(0.80, 0.97, 1000), rng.uniform(-0.2, 0.6, 5000)
    tiers, notes = choose_tiers(dup, near, unrelated)
    assert notes == []
    assert tiers["similar"] == round(float(np.quantile(unrelated, 0.99)), 3)
    assert tiers["near"] == round(float(np.quantile(near, 0.05)), 3)  # above p99.9 of unrelated: the recall rule
    assert tiers["duplicate"] == round(float(np.quantile(near, 0.95)), 3)  # p2 of dup is lower: the near cap wins


def test_overlapping_samples_are_clamped_in_order_and_said_so() -> None:
    rng = np.random.default_rng(1)
    same = rng.uniform(0.995, 1.0, 500)  # a model that embeds everything alike
    tiers, notes = choose_tiers(same, same, same)
    assert strictly_decreasing(tiers)
    assert tiers["duplicate"] - tiers["near"] >= MIN_GAP - 1e-9 and tiers["near"] - tiers["similar"] >= MIN_GAP - 1e-9
    assert any("duplicate lowered" in n for n in notes) and any("near raised" in n for n in notes)


def test_copies_among_the_images_are_left_out_of_the_unrelated_pairs() -> None:
    images = [real(n) for n in ("astronaut", "coffee", "rocket")]
    copy = duplicate_copy(images[1], np.random.default_rng(0))
    assert distinct_images([*images, copy, images[0]]) == [0, 1, 2]


# ----------------------------------------------------------------------------- the real default model


def test_the_default_model_file_carries_tiers_from_the_built_in_images(
    default_model: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lookalike.trainer.tiers as tiers_module
    from lookalike.server.core.embedding import default_model as dm

    _, meta = default_model
    assert meta.tiers is not None and strictly_decreasing(meta.tiers)
    assert meta.calibration["source"] == calibration_images.SOURCE
    assert meta.calibration["images"] == calibration_images.COUNT and meta.calibration["method"] == "tiers-v1"
    name = dm.cache_file_name(dm.default_meta())
    assert dm.default_model_path().name == name
    # the cache name follows the tiers' recipe: a file cached without tiers (or with older ones) is converted again
    monkeypatch.setattr(tiers_module, "METHOD", "tiers-v0")
    assert dm.cache_file_name(dm.default_meta()) != name


def test_default_tiers_tell_a_copy_of_a_real_photo_from_another_photo(default_model: tuple) -> None:
    module, meta = default_model
    embed = module_embed(module, meta)
    coffee, rocket = (real(n) for n in HELD_OUT_PHOTOS)
    copy = duplicate_copy(coffee, np.random.default_rng(7))
    v = embed([coffee, copy, rocket])
    assert float(v[0] @ v[1]) >= meta.tiers["duplicate"]
    assert float(v[0] @ v[2]) < meta.tiers["similar"]


def test_calibrating_on_real_photos_orders_the_tiers_and_holds_on_photos_it_never_saw(default_model: tuple) -> None:
    module, meta = default_model
    embed = module_embed(module, meta)
    tiers, calibration = calibrate_tiers(embed, [real(n) for n in CALIBRATION_PHOTOS], source="photos")
    assert strictly_decreasing(tiers)
    assert calibration["images"] == len(CALIBRATION_PHOTOS) and calibration["source"] == "photos"
    assert calibration["pairs"] == {"duplicate": 14, "near": 14, "unrelated": 91}
    p = calibration["percentiles"]
    assert p["duplicate"]["p50"] > p["near"]["p50"] > p["unrelated"]["p50"]
    coffee, rocket = (real(n) for n in HELD_OUT_PHOTOS)
    copies = [duplicate_copy(im, np.random.default_rng([99, i])) for i, im in enumerate((coffee, rocket))]
    v = embed([coffee, rocket, *copies])
    assert float(v[0] @ v[2]) >= tiers["duplicate"] and float(v[1] @ v[3]) >= tiers["duplicate"]
    assert float(v[0] @ v[1]) < tiers["similar"]
    # the report scores the same relations: the copies are duplicates, the two photos unrelated
    report = tier_report(embed, tiers, near_dup={"held-out": [coffee, rocket]}, seed=5)["held-out"]
    assert report["duplicate"]["true"] == 2  # each photo with its duplicate copy
    assert report["near"]["true"] == 4  # each near copy with its photo and with that photo's duplicate copy
    assert report["similar"]["true"] == 0 and report["similar"]["recall"] is None


def test_calibration_is_reproducible_and_needs_enough_distinct_images(small_model: Path) -> None:
    module, meta = load_embedder(small_model)
    embed = module_embed(module, meta)
    images = calibration_images.calibration_images(12, seed=5)
    first, second = calibrate_tiers(embed, images), calibrate_tiers(embed, images)
    assert first == second and json.dumps(first[1])  # JSON, no dates
    with pytest.raises(ValueError, match="at least 8 distinct images, got 3 of 6"):
        calibrate_tiers(embed, images[:3] * 2)


def test_the_built_in_images_are_deterministic_and_varied() -> None:
    a, b = calibration_images.calibration_image(3), calibration_images.calibration_image(3)
    assert a.tobytes() == b.tobytes() and a.mode == "RGB"
    images = calibration_images.calibration_images(20)
    assert len({im.size for im in images}) > 10 and distinct_images(images) == list(range(20))


# ----------------------------------------------------------------------------- hooks: export and CLI


def test_an_export_is_calibrated_on_held_out_images_when_there_are_enough(small_model: Path, tmp_path: Path) -> None:
    from lookalike.trainer.export import MIN_TIER_IMAGES, calibrate_export

    own = calibration_images.calibration_images(MIN_TIER_IMAGES, seed=11)  # stand-ins for a user's images
    meta = calibrate_export(small_model, own)
    assert meta.calibration["source"] == "held-out training images"
    assert meta.calibration["images"] == MIN_TIER_IMAGES and strictly_decreasing(meta.tiers)
    meta = calibrate_export(small_model, own[:8])  # too few: the built-in set, as the default model
    assert meta.calibration["source"] == calibration_images.SOURCE
    assert load_embedder(small_model)[1].tiers == meta.tiers


def test_the_training_loop_export_carries_tiers(tmp_path: Path) -> None:
    from lookalike.trainer.config import load_config
    from lookalike.trainer.loop import TrainState, _export
    from lookalike.trainer.methods.registry import build_method
    from lookalike.trainer.selfcheck import make_check_set

    torch.manual_seed(0)
    cfg = load_config(["tiny"])
    method = build_method("MOCO_R50", backbone="test_resnet", image_size=32, K=8)
    check = make_check_set(calibration_images.calibration_images(40, seed=3), views=1)
    path = _export(cfg, method, tmp_path / "e.pt", TrainState(), "t", None, check)
    meta = load_embedder(path)[1]
    assert meta.calibration["source"] == "held-out training images" and strictly_decreasing(meta.tiers)
    path = _export(cfg, method, tmp_path / "f.pt", TrainState(), "t")  # no self-check: the built-in set
    assert load_embedder(path)[1].calibration["source"] == calibration_images.SOURCE


def test_the_calibrate_command_rewrites_the_file_and_prints(
    small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = load_embedder(small_model)[1]
    assert before.tiers is None
    assert lookalike_main(["calibrate", str(small_model)]) == 0
    out = capsys.readouterr().out
    meta = load_embedder(small_model)[1]
    assert strictly_decreasing(meta.tiers) and meta.calibration["source"] == calibration_images.SOURCE
    assert f"duplicate  {meta.tiers['duplicate']:.3f}" in out and "similar" in out
    assert f"{calibration_images.COUNT} images" in out

    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(calibration_images.calibration_images(12, seed=8)):
        im.save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    (folder / "broken.jpg").write_text("not an image")
    assert lookalike_main(["calibrate", str(small_model), "--images", str(folder), "--max-images", "10", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    meta = load_embedder(small_model)[1]
    assert printed["tiers"] == meta.tiers and printed["calibration"] == meta.calibration
    assert meta.calibration["source"] == "folder mine" and meta.calibration["images"] <= 10

    assert lookalike_main(["calibrate", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert lookalike_main(["calibrate", str(small_model), "--images", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_calibrate_model_file_on_the_built_in_set_by_default(small_model: Path) -> None:
    meta = calibrate_model_file(small_model)
    assert meta.calibration["source"] == calibration_images.SOURCE and meta.calibration["seed"] == 0
