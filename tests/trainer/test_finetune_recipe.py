"""Issue 13, second pass: early stages frozen, the self-check's pick within its noise, the tabler icon set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolder import write_image_folder
from lookalike.trainer.config import load_config
from lookalike.trainer.eval import domains
from lookalike.trainer.loop import train
from lookalike.trainer.models.backbones import backbone_stages, create_backbone, freeze_early_stages
from lookalike.trainer.selfcheck import (
    BEST_EXPORT,
    TRANSFORMS,
    SelfCheckLog,
    altered_copy,
    keeps_copies,
    paired_jackknife_se,
    within_noise,
)
from PIL import Image

# ----------------------------------------------------------------------------- frozen early stages


@pytest.mark.parametrize(("name", "stages"), [("tf_efficientnet_lite0", 7), ("resnet10t", 4)])
def test_freeze_early_stages_leaves_the_last_stages_and_the_head_training(name: str, stages: int) -> None:
    model, _ = create_backbone(name)
    names, found = backbone_stages(model)
    assert len(found) == stages
    frozen, trainable = freeze_early_stages(model, 2)
    assert frozen > 0 and trainable > 0
    assert frozen + trainable == sum(p.numel() for p in model.parameters())
    for i, stage in enumerate(found):
        want = i >= stages - 2
        assert all(p.requires_grad == want for p in stage.parameters()), f"stage {i}"
    first = next(m for n, m in model.named_children() if n in ("conv_stem", "conv1"))
    assert not any(p.requires_grad for p in first.parameters()), "the stem is frozen"
    if name == "tf_efficientnet_lite0":
        assert all(p.requires_grad for p in model.conv_head.parameters()), "what follows the stages trains"
    with pytest.raises(ValueError, match="trainable_stages"):
        freeze_early_stages(model, -1)


def test_trainable_stages_trains_only_the_tail(tmp_path: Path) -> None:
    """One step with train.trainable_stages=1: the stem and early stages keep their weights; the last stage moves."""
    folder = tmp_path / "imgs"
    write_image_folder(folder, 24)
    cfg = load_config(["tiny"], [f"data.source={folder}", f"train.output_dir={tmp_path / 'out'}", "train.epochs=1",
                                 "train.steps_per_epoch=1", "train.trainable_stages=1", "data.num_workers=0",
                                 "selfcheck.holdout=0", "train.progress=false"])  # fmt: skip
    torch.manual_seed(cfg.train.seed)
    from lookalike.trainer.loop import build_method_from_config

    before = build_method_from_config(cfg).embedder().state_dict()  # same seed: the run's initial weights
    train(cfg)
    ckpt = torch.load(tmp_path / "out" / "epoch_1.pth", map_location="cpu", weights_only=False)
    state = ckpt["method"]
    after = {k.removeprefix("encoder_q.backbone."): v for k, v in state.items() if k.startswith("encoder_q.backbone.")}
    moved = {k for k, v in before.items() if v.dtype.is_floating_point and not torch.equal(v, after[k])}
    assert moved, "the last stage trains"
    assert all(k.startswith(("layer4.", "fc.")) for k in moved), sorted(moved)[:5]


def test_negative_trainable_stages_is_refused() -> None:
    with pytest.raises(ValueError, match="train.trainable_stages"):
        load_config(["finetune"], ["data.source=x", "train.trainable_stages=-1"]).validate()


# ----------------------------------------------------------------------------- the self-check's pick


def _entry(epoch: int, per_image: list[float], hit: list[int] | None = None) -> dict:
    """A check whose score is the mean of per-image values, with their leave-one-out means as the jackknife."""
    v = np.asarray(per_image, dtype=np.float64)
    m = float(v.mean())
    hit = hit if hit is not None else [1] * len(v)
    return {"epoch": epoch, "step": epoch, "export": f"e{epoch}.pt", "score": m, "mAP": 0.8,
            "recall@1": float(np.mean(hit)), "alignment": 0.5, "uniformity": -0.5 - m,
            "jackknife": list((v.sum() - v) / (len(v) - 1)), "hit": hit}  # fmt: skip


def test_within_noise_uses_the_paired_jackknife_standard_error() -> None:
    top = _entry(1, [1.9, 1.8, 1.7, 1.6])
    tie = _entry(2, [1.91, 1.78, 1.69, 1.61])  # differences +0.01 -0.02 -0.01 +0.01: mean -0.0025, se 0.0075
    worse = _entry(3, [1.8, 1.7, 1.6, 1.5])  # -0.1 on every image: se 0, clearly below
    d = np.array([0.01, -0.02, -0.01, 0.01])
    # The jackknife of a mean is the textbook standard error of the mean.
    assert paired_jackknife_se(tie["jackknife"], top["jackknife"]) == pytest.approx(d.std(ddof=1) / 2)
    assert within_noise(tie, top, 1.0) and not within_noise(worse, top, 1.0)
    assert not within_noise(tie, top, 0.0)  # no tolerance: strictly the top
    old = {"epoch": 4, "export": "e4.pt", "score": 1.6}  # a log line from before the jackknife: by score
    assert not within_noise(old, top, 1.0) and within_noise(top | {"jackknife": None}, top, 1.0)


def test_the_guard_counts_lost_copies_against_their_noise() -> None:
    start = _entry(0, [1.0] * 40)
    one_lost = _entry(1, [1.0] * 40, hit=[0] + [1] * 39)
    two_lost = _entry(2, [1.0] * 40, hit=[0, 0] + [1] * 38)
    swapped = _entry(3, [1.0] * 40, hit=[0, 0] + [1] * 38)
    start_misses = _entry(0, [1.0] * 40, hit=[1, 1, 0, 0] + [1] * 36)
    assert keeps_copies(one_lost, start, 1.0) and not keeps_copies(two_lost, start, 1.0)
    assert keeps_copies(swapped, start_misses, 1.0)  # two lost, two found: the same recall@1
    assert not keeps_copies({"recall@1": 0.9}, {"recall@1": 0.95}, 1.0)  # older logs: by recall@1


def _log(tmp_path: Path, entries: list[dict]) -> SelfCheckLog:
    log = SelfCheckLog(tmp_path, tolerance_se=1.0)
    for e in entries:
        export = tmp_path / e["export"]
        export.write_bytes(e["export"].encode())
        log.add(e["epoch"], e["step"], export, {k: v for k, v in e.items() if k not in ("epoch", "step", "export")})
    return log


def test_best_export_is_the_latest_check_within_noise_of_the_top(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(1.5, 1.9, size=40)
    start = _entry(0, list(base))
    peak = _entry(1, list(base + 0.02))
    wobble = np.where(np.arange(40) % 2 == 0, 0.01, -0.012)  # mean -0.001: a hair below the peak, in the noise
    tied = _entry(2, list(base + 0.02 + wobble))
    log = _log(tmp_path, [start, peak, tied])
    assert log.top["epoch"] == 1 and log.best["epoch"] == 2
    assert (tmp_path / BEST_EXPORT).read_bytes() == b"e2.pt"
    broken = _entry(3, list(base - 0.2))  # a later checkpoint that broke retrieval is never the pick
    log.add(3, 3, tmp_path / "e3.pt", {k: v for k, v in broken.items() if k not in ("epoch", "step", "export")})
    assert log.best["epoch"] == 2 and (tmp_path / BEST_EXPORT).read_bytes() == b"e2.pt"
    assert "beats its start" in log.verdict()


def test_the_last_check_is_served_when_it_is_clearly_above_the_start(tmp_path: Path) -> None:
    """The score does not rank one run's checkpoints (it prefers the early, most spread ones), but it does
    tell whether the fine-tune moved away from the start: the last checkpoint is served when it did."""
    base = np.linspace(1.6, 1.9, 30)
    start, early_top, later = _entry(0, list(base)), _entry(1, list(base + 0.12)), _entry(2, list(base + 0.05))
    log = _log(tmp_path, [start, early_top, later])
    assert log.top["epoch"] == 1 and not within_noise(later, early_top, 1.0)  # clearly below the top
    assert log.best["epoch"] == 2 and (tmp_path / BEST_EXPORT).read_bytes() == b"e2.pt"
    wobble = np.where(np.arange(30) % 2 == 0, 0.011, -0.011)
    for epoch, values, hit in ((3, base + wobble, None), (4, base + 0.2, [0] * 5 + [1] * 25)):
        e = _entry(epoch, list(values), hit)  # 3 only ties the start; 4 scores high but loses 5 copies
        (tmp_path / e["export"]).write_bytes(e["export"].encode())
        metrics = {k: v for k, v in e.items() if k not in ("epoch", "step", "export")}
        log.add(epoch, epoch, tmp_path / e["export"], metrics)
        assert log.best["epoch"] == 1, epoch  # back to the latest check within noise of the top
    assert (tmp_path / BEST_EXPORT).read_bytes() == b"e1.pt"


def test_a_spread_out_checkpoint_that_loses_its_copies_is_never_served(tmp_path: Path) -> None:
    """Random features spread best of all: the guard, not the score, must keep them out."""
    base = np.linspace(1.6, 1.9, 20)
    scattered = _entry(1, list(base + 0.5), hit=[0] * 10 + [1] * 10)  # far higher score, half the copies lost
    log = _log(tmp_path, [_entry(0, list(base)), scattered])
    assert log.best["epoch"] == 0 and log.top["epoch"] == 0
    assert (tmp_path / BEST_EXPORT).read_bytes() == b"e0.pt"
    assert "did NOT beat its starting model" in log.verdict()


def test_start_is_served_when_every_checkpoint_is_clearly_worse(tmp_path: Path) -> None:
    base = list(np.linspace(1.6, 1.9, 20))
    log = _log(tmp_path, [_entry(0, base), _entry(1, [a - 0.05 for a in base]), _entry(2, [a - 0.1 for a in base])])
    assert log.best["epoch"] == 0 and (tmp_path / BEST_EXPORT).read_bytes() == b"e0.pt"
    assert "did NOT beat its starting model" in log.verdict()
    reloaded = SelfCheckLog.load(tmp_path)
    assert [e["epoch"] for e in reloaded.entries] == [0, 1, 2] and reloaded.best["epoch"] == 0
    first = json.loads((tmp_path / "selfcheck.jsonl").read_text().splitlines()[0])
    assert first["jackknife"] == _entry(0, base)["jackknife"]


@pytest.mark.parametrize("shift", [-0.001, 0.001])
def test_a_checkpoint_that_only_ties_the_start_is_not_served(tmp_path: Path, shift: float) -> None:
    """A tie is no evidence of a gain: a 5x learning rate tied the start's score at -1.15 labelled mAP."""
    base = np.linspace(1.6, 1.9, 20)
    wobble = np.where(np.arange(20) % 2 == 0, 0.011, -0.011) + shift  # well inside one standard error
    log = _log(tmp_path, [_entry(0, list(base)), _entry(1, list(base + wobble))])
    assert log.best["epoch"] == 0 and (tmp_path / BEST_EXPORT).read_bytes() == b"e0.pt"
    assert log.ties_start()["epoch"] == 1
    assert "tie: the fine-tune is within the self-check's noise (±" in log.verdict()
    assert "of its start (epoch 1: " in log.verdict() and "(best_export.pt = start)" in log.verdict()
    clear = _entry(2, list(base + 0.02))  # then a checkpoint clearly above the start is served
    (tmp_path / "e2.pt").write_bytes(b"e2.pt")
    log.add(2, 2, tmp_path / "e2.pt", {k: v for k, v in clear.items() if k not in ("epoch", "step", "export")})
    assert log.best["epoch"] == 2 and log.ties_start() is None and "beats its start" in log.verdict()


# Each altered copy is compared with the part of the original it shows, found by normalised
# cross-correlation of the luminance (unchanged by a crop, rescaling or JPEG, and by colour jitter
# but for a scale and offset), so the checks hold whatever the transforms draw.
def _luminance(a: np.ndarray) -> np.ndarray:
    return a @ np.array([0.299, 0.587, 0.114])


def _sharpness(a: np.ndarray) -> float:
    """Steps between neighbouring pixels over the contrast: the fine detail a lower resolution loses
    (brightness and contrast changes scale both alike)."""
    y = _luminance(a)
    return float((np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean()) / y.std())


def _blockiness(a: np.ndarray) -> float:
    """Steps across the 8x8 JPEG block edges over steps elsewhere: about 1 for a photo, above with JPEG blocking."""
    y = _luminance(a)
    ratios = []
    for steps in (np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0)).T):
        edge = (np.arange(steps.shape[1]) + 1) % 8 == 0
        ratios.append(steps[:, edge].mean() / steps[:, ~edge].mean())
    return float(np.mean(ratios))


def _colour_stats(a: np.ndarray) -> np.ndarray:
    """Brightness, contrast and saturation."""
    y = _luminance(a)
    return np.array([y.mean(), y.std(), (a.max(axis=2) - a.min(axis=2)).mean()])


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((192, 192), Image.LANCZOS)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", TRANSFORMS)
def test_each_altered_copy_does_what_its_name_says(scene: Image.Image, kind: str, seed: int) -> None:
    from skimage.feature import match_template

    assert set(TRANSFORMS) == {"crop", "rescale", "jpeg", "colour", "combo"}
    out = altered_copy(scene, kind, np.random.default_rng(seed))
    assert out.mode == "RGB"
    copy, whole = np.asarray(out, np.float64), np.asarray(scene, np.float64)
    h, w = copy.shape[:2]
    fit = match_template(_luminance(whole), _luminance(copy))
    top, left = np.unravel_index(int(np.argmax(fit)), fit.shape)
    assert fit.max() > 0.9, "the copy shows a part of the original"
    view = whole[top : top + h, left : left + w]  # that part, un-augmented
    area = h * w / (whole.shape[0] * whole.shape[1])
    shift = np.abs(_colour_stats(copy) / _colour_stats(view) - 1)  # relative change of each

    if kind == "crop":  # a smaller field of view, pixels untouched
        assert 0.2 <= area <= 0.55 and np.array_equal(copy, view)
        return
    assert area <= (0.65 if kind == "combo" else 0.85), "every copy is of a crop"
    blocky, sharper = _blockiness(copy) - _blockiness(view), _sharpness(copy) / _sharpness(view)
    if kind == "rescale":  # fewer pixels' worth of detail at the same size; brightness, saturation kept, no blocking
        assert sharper < 0.75 and shift[[0, 2]].max() < 0.05 and blocky < 0.1
    elif kind == "jpeg":  # block artefacts and changed pixels; detail and colours otherwise kept
        assert blocky > 0.15 and np.abs(copy - view).mean() > 3 and 0.85 < sharper < 1.15 and shift.max() < 0.05
    elif kind == "colour":  # brightness, contrast or saturation moved; the same picture, as sharp, no blocking
        assert fit.max() > 0.98 and shift.max() > 0.1 and 0.85 < sharper < 1.15 and abs(blocky) < 0.05
    else:  # combo: all of it at once (brightness or saturation moved: the blur alone lowers the contrast)
        assert blocky > 0.15 and sharper < 0.75 and shift[[0, 2]].max() > 0.1


# ----------------------------------------------------------------------------- the icon set


def _tabler_installed() -> bool:
    try:
        domains.tabler_package_dirs()
    except ValueError:
        return False
    return True


def test_tabler_missing_raises_with_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(domains.DATASETS_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="@tabler/icons-png"):
        domains.load_domain("icons-tabler")


def test_tabler_selection_from_a_fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Categories kept, -off variants dropped, at most 24 a kind spread over the names, images on white."""
    base = tmp_path / "node_modules" / "@tabler"
    (base / "icons").mkdir(parents=True)
    png = base / "icons-png" / "icons" / "outline"
    png.mkdir(parents=True)
    icons = {}
    for i in range(30):
        icons[f"car-{i:02d}"] = {"category": "Vehicles", "styles": {"outline": {}}}
    for i in range(12):
        icons[f"cat-{i:02d}"] = {"category": "Animals", "styles": {"outline": {}}}
    icons["cat-00-off"] = {"category": "Animals", "styles": {"outline": {}}}
    for i in range(15):
        icons[f"gear-{i:02d}"] = {"category": "System", "styles": {"outline": {}}}  # not a visual kind
    for name in icons:
        Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(png / f"{name}.png")
    (base / "icons" / "icons.json").write_text(json.dumps(icons))
    monkeypatch.setenv(domains.DATASETS_ENV, str(tmp_path))
    data, query = domains.load_domain("icons-tabler")
    assert query is None and data.classes == ["Animals", "Vehicles"]
    assert np.bincount(data.labels).tolist() == [12, 24]
    names = [Path(r).stem for r in data.refs]
    assert "cat-00-off" not in names and "car-00" in names and "car-29" in names  # spread, not the first 24
    assert np.asarray(data.images[0]).min() == 255, "transparent icons are composited onto white"


@pytest.mark.skipif(not _tabler_installed(), reason=f"not installed: {domains.TABLER_INSTALL_HINT}")
def test_tabler_set_as_installed() -> None:
    data, _ = domains.load_domain("icons-tabler")
    assert len(data.classes) >= 20 and len(data) >= 400
    counts = np.bincount(data.labels)
    assert counts.min() >= domains.MIN_PER_CLASS and counts.max() <= domains.MAX_PER_CLASS
    meta = json.loads((domains.tabler_package_dirs()[0] / "icons.json").read_text())
    for ref, label in zip(data.refs, data.labels, strict=True):
        assert meta[Path(ref).stem]["category"] == data.classes[label]


# ----------------------------------------------------------------------------- time budget and self-check cost


def test_slow_self_checks_get_at_most_a_quarter_of_the_budget() -> None:
    """Checks of 100 s in 1000 s left: 2 checkpoints, not 10 (which would leave no time to train)."""
    import time

    from lookalike.trainer.loop import SchedulePlan

    plan = SchedulePlan(steps_per_epoch=10, epochs=1000, total_steps=10_000, warmup_steps=20, adapt_checkpoints=True)
    plan.deadline = time.monotonic() + 1000
    plan.check_seconds = 100.0
    note = plan.fit_to_budget(done=0, seconds_per_step=1.0)
    assert note is not None and 790 <= plan.total_steps <= 800
    assert plan.epochs == 80 and plan.checkpoint_every == 40, "two self-checked checkpoints"


def test_bench_tracking_counts_picks_against_the_labelled_map(tmp_path: Path) -> None:
    """bench/domains.py tracking: the trainer's pick, the top score and the last checkpoint, scored with labels."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_domains", Path(__file__).parents[2] / "bench" / "domains.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = tmp_path / "work" / "set"
    run = folder / "finetune"
    run.mkdir(parents=True)
    base = list(np.linspace(1.6, 1.9, 20))
    checks = [("start_export.pt", 0, base), ("epoch_1_export.pt", 1, [a - 0.05 for a in base])]  # clearly worse
    with (run / "selfcheck.jsonl").open("w") as fh:
        for name, epoch, loo in checks:
            fh.write(json.dumps({**_entry(epoch, loo), "export": name, "mAP": 0.9 - 0.1 * epoch}) + "\n")
    old_log = folder.parent / "old" / "finetune"  # a log of an older version: scored by the copies' mAP
    old_log.mkdir(parents=True)
    with (old_log / "selfcheck.jsonl").open("w") as fh:
        for name, epoch, align, unif, copies_map in (("start_export.pt", 0, 0.56, -2.38, 0.85),
                                                      ("epoch_1_export.pt", 1, 0.63, -2.49, 0.81)):  # fmt: skip
            fh.write(json.dumps({"epoch": epoch, "step": epoch, "export": name, "score": copies_map, "mAP": copies_map,
                                 "recall@1": 1.0, "alignment": align, "uniformity": unif}) + "\n")  # fmt: skip
    old_eval = {"default": {"spec": "default", "mAP": 0.2275},
                "fine-tune": {"spec": str(old_log / "epoch_1_export.pt"), "mAP": 0.2476}}  # fmt: skip
    (old_log.parent / "eval.json").write_text(json.dumps(old_eval))
    labelled = {"default": ("default", 0.20), "fine-tune": (str(run / "epoch_1_export.pt"), 0.25)}
    (folder / "eval.json").write_text(json.dumps({k: {"spec": s, "mAP": m} for k, (s, m) in labelled.items()}))
    text = bench.tracking([tmp_path / "work"])
    # set: the trainer serves the start (0.20), below the last checkpoint (0.25); old: re-scored as
    # -(alignment + uniformity), 1.82 -> 1.86, it serves the last checkpoint, which the copies' mAP did not.
    assert "latest within noise: 1/2 picks >= the last checkpoint's mAP, 2/2 >= the start's" in text
    assert "top copies' mAP: 0/2 picks >= the last checkpoint's mAP, 2/2 >= the start's" in text
    assert "last: 2/2 picks >= the last checkpoint's mAP, 2/2 >= the start's" in text
    assert "score moved with labelled mAP from the start to the last checkpoint: 1/2 runs" in text
    assert "copies' mAP moved with labelled mAP from the start to the last checkpoint: 0/2 runs" in text
