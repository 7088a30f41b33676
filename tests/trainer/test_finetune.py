"""Issue 13: a fine-tune recipe sound at any dataset size, its unlabelled self-check, and the time budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from imagefolder import write_image_folder
from lookalike.trainer.config import load_config
from lookalike.trainer.loop import SchedulePlan, adapt_to_dataset, loader_workers, train
from lookalike.trainer.methods import moco as moco_module
from lookalike.trainer.methods.registry import build_method
from lookalike.trainer.selfcheck import (
    BEST_EXPORT,
    START_EXPORT,
    SelfCheckLog,
    check_metrics,
    holdout_indices,
    make_check_set,
)
from lookalike.trainer.train_cli import main
from PIL import Image

from lookalike.modelfile import load_embedder, preprocess, quiet_torchscript, read_meta


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    write_image_folder(root, 40)
    return root


def _tiny_moco(K: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method("mocov2", backbone="resnet10t", K=K, dim=8, image_size=32, shuffle_bn=False)


def _views(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 32, 32, generator=g) for _ in range(2)]


# ----------------------------------------------------------------------------- the queue


def test_queue_never_offers_a_key_of_an_image_in_the_batch_as_a_negative(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fill the queue with keys of images 0-7, then train on a batch holding images 2, 5 and two new ones."""
    method = _tiny_moco(K=8)
    method.eval()  # fixed BN statistics: the same image gives the same features in every call
    with torch.no_grad():
        method(_views(4, 0), index=torch.tensor([0, 1, 2, 3]))
        method(_views(4, 1), index=torch.tensor([4, 5, 6, 7]))
    assert method.queue_index.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    seen: dict[str, torch.Tensor] = {}
    real = moco_module.info_nce_loss

    def spy(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, T: float, mask: torch.Tensor | None = None):
        loss, logits = real(q, k, queue, T, mask=mask)
        seen.update(q=q.detach(), k=k.detach(), queue=queue.detach(), logits=logits.detach(), loss=loss.detach())
        return loss, logits

    monkeypatch.setattr(moco_module, "info_nce_loss", spy)
    batch = torch.tensor([2, 5, 10, 11])
    with torch.no_grad():
        method(_views(4, 2), index=batch)
    negatives = seen["logits"][:, 1:]  # [4, K]
    # Row r must not see queue slot j when slot j holds a key of image batch[r]: slot 2 for row 0, slot 5 for row 1.
    for r, image in enumerate(batch.tolist()):
        for j in range(8):
            own = j == image
            assert torch.isinf(negatives[r, j]).item() == own, (r, j)
    # The loss is InfoNCE over the remaining negatives only (naive reference).
    q, k, queue, T = seen["q"], seen["k"], seen["queue"], method.T
    expected = []
    for r, image in enumerate(batch.tolist()):
        keep = [j for j in range(8) if j != image]
        row = torch.cat([(q[r] * k[r]).sum()[None], q[r] @ queue[:, keep]]) / T
        expected.append(-F.log_softmax(row, dim=0)[0])
    assert torch.allclose(seen["loss"], torch.stack(expected).mean(), atol=1e-5)
    # After the step the batch's keys are queued with their image indices (overwriting slots 0-3).
    assert method.queue_index.tolist() == [2, 5, 10, 11, 4, 5, 6, 7]


def test_in_batch_negatives_need_no_queue_and_match_moco_v3() -> None:
    method = _tiny_moco(K=0)
    method.eval()
    views = _views(6, 3)
    out = method(views, index=torch.arange(6))
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    with torch.no_grad():
        q1, q2 = (F.normalize(method.encoder_q(v), dim=1) for v in views)
        k1, k2 = (F.normalize(method.encoder_k(v), dim=1) for v in views)

    def ctr(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(q @ k.T / method.T, torch.arange(q.shape[0])) * 2 * method.T

    assert torch.allclose(out["loss"].detach(), (ctr(q1, k2) + ctr(q2, k1)) / 2, atol=1e-5)


# ----------------------------------------------------------------------------- adapting to the dataset size


@pytest.mark.parametrize("n_train", [30, 100, 241, 526, 3_000, 100_000])
def test_batch_and_queue_fit_the_dataset(n_train: int) -> None:
    cfg = load_config(["finetune"], ["data.source=x"])
    notes = adapt_to_dataset(cfg, n_train, world=1)
    batch, K = cfg.train.batch_size, cfg.method.options["K"]
    assert 2 <= batch <= 64 and n_train // batch >= 2, (batch, notes)
    assert K == 0 or (K % batch == 0 and K <= n_train - batch), (K, notes)
    if n_train <= 241:
        assert K == 0, "a small set trains with in-batch negatives"
    if n_train >= 100_000:
        assert (batch, K, notes) == (64, 4096, []), "a large set keeps the configured values"
    assert all("->" in n for n in notes)


def test_tiny_dataset_under_two_processes_keeps_the_global_batch_below_the_dataset() -> None:
    cfg = load_config(["tiny"], ["data.source=x", "method.options={K: 64}"])
    adapt_to_dataset(cfg, 20, world=2)
    assert cfg.train.batch_size * 2 <= 10 and cfg.method.options["K"] == 0


def test_loader_workers_default_to_the_cores_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert loader_workers(load_config(None, ["data.source=x"])) == 2
    assert loader_workers(load_config(None, ["data.source=x", "data.num_workers=0"])) == 0


# ----------------------------------------------------------------------------- the self-check metric


def _naive_check(o: np.ndarray, c: np.ndarray, owner: np.ndarray) -> dict[str, float]:
    n, m = len(o), len(c)
    hits, aps = 0, []
    for i in range(n):
        sims = [float(np.dot(o[i], c[j])) for j in range(m)]
        ranked = sorted(range(m), key=lambda j: -sims[j])
        hits += owner[ranked[0]] == i
        found, precisions = 0, []
        for rank, j in enumerate(ranked, start=1):
            if owner[j] == i:
                found += 1
                precisions.append(found / rank)
        aps.append(sum(precisions) / max(1, found))
    align = sum(float(np.sum((o[owner[j]] - c[j]) ** 2)) for j in range(m)) / m
    pots = [np.exp(-2 * np.sum((o[i] - o[j]) ** 2)) for i in range(n) for j in range(i + 1, n)]
    return {
        "recall@1": hits / n,
        "mAP": float(np.mean(aps)),
        "alignment": align,
        "uniformity": float(np.log(np.mean(pots))),
    }


def test_self_check_metrics_match_a_naive_computation() -> None:
    rng = np.random.default_rng(0)
    n, views, d = 12, 3, 16
    o = rng.normal(size=(n, d))
    owner = np.repeat(np.arange(n), views)
    c = o[owner] + rng.normal(scale=3.0, size=(n * views, d))  # noisy copies: some originals miss
    o /= np.linalg.norm(o, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    got, want = check_metrics(o, c, owner), _naive_check(o, c, owner)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert 0 < got["recall@1"] < 1, "the case must exercise misses"
    assert got["score"] == pytest.approx(-(want["alignment"] + want["uniformity"]))  # Wang & Isola, negated
    assert sum(got["hit"]) == round(want["recall@1"] * n)
    # The jackknife entry i is the whole computation with original i and its copies removed.
    for i in (0, 5, n - 1):
        keep = owner != i
        rest = _naive_check(np.delete(o, i, axis=0), c[keep], np.where(owner[keep] > i, owner[keep] - 1, owner[keep]))
        assert got["jackknife"][i] == pytest.approx(-(rest["alignment"] + rest["uniformity"]), abs=1e-6), i


def test_check_set_alters_copies_and_holdout_is_a_slice() -> None:
    from photos import photo

    images = [Image.fromarray(photo(name)) for name in ("chelsea", "coffee")]
    check = make_check_set(images, views=4, seed=1)
    assert check.owner.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(cp.size != images[o].size for cp, o in zip(check.copies, check.owner, strict=True))  # cropped
    held = holdout_indices(100, 0.1, 8, 200, seed=0)
    assert len(held) == 10 and len(set(held.tolist())) == 10 and held.max() < 100
    assert len(holdout_indices(20, 0.1, 8, 200, seed=0)) == 8 and len(holdout_indices(100, 0.0, 8, 200, 0)) == 0


# ----------------------------------------------------------------------------- runs


def test_max_minutes_stops_cleanly_with_a_valid_export(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline stops a run whose schedule outlasts the budget (steps that got slower after the fit).

    Without the fit the 200-epoch schedule cannot end in 1.2 s; with it the run could end on its own
    just before the clock, which is not the path under test.
    """
    monkeypatch.setattr(SchedulePlan, "fit_to_budget", lambda self, done, seconds_per_step: None)
    monkeypatch.setattr(SchedulePlan, "shorten_to_fit", lambda self, done, done_epochs, seconds_per_step: None)
    out = tmp_path / "budget"
    cfg = load_config(["tiny"], [f"data.source={folder}", f"train.output_dir={out}", "train.epochs=200",
                                 "train.max_minutes=0.02", "train.checkpoint_every=1000",
                                 "train.allow_short=true"])  # fmt: skip
    result = train(cfg)
    assert result.stopped_by_time and result.state.epoch < 200
    export = out / f"epoch_{result.state.epoch}_export.pt"
    assert export.is_file() and result.exports[-1] == export, "the stop writes an export even off the schedule"
    with quiet_torchscript():
        module, meta = load_embedder(export)
    x = torch.from_numpy(preprocess(Image.open(next(folder.glob("*.jpg"))), meta))[None]
    with torch.no_grad():
        assert torch.isfinite(module(x)).all()
    assert (out / "last.pth").is_file()


@pytest.mark.slow
def test_finetune_on_a_few_dozen_images_reports_its_self_check_against_the_start(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The README's recipe (packaged EfficientNet-Lite0), shrunk to 64 px and 6 steps, on 40 photos."""
    out = tmp_path / "ft"
    argv = ["--config", "finetune", "--data", str(folder), "--output", str(out), "method.image_size=64",
            "train.steps=6", "data.num_workers=0", "train.progress=false"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "method.options.K 4096 -> 0" in text and "train.batch_size 64 -> 16" in text
    assert "self-check at the start" in text
    assert "each export centred on 32 of the images" in text  # 40 photos, 8 held out: every training image
    for export in out.glob("*export.pt"):  # the start's and every checkpoint's, best_export.pt included
        center = read_meta(export).center
        assert center is not None and 0.3 < float(np.linalg.norm(center)) < 1.0, export.name
    verdicts = ("the fine-tune beats its start", "did NOT beat its starting model", "tie: the fine-tune is within")
    assert any(v in text for v in verdicts)
    log = [json.loads(line) for line in (out / "selfcheck.jsonl").read_text().splitlines()]
    assert log[0]["epoch"] == 0 and log[0]["export"] == START_EXPORT and len(log) >= 2
    best = SelfCheckLog.load(out).best  # the latest check within noise of the top score
    assert best is not None and (out / BEST_EXPORT).read_bytes() == (out / best["export"]).read_bytes()
    assert all(0 <= e["recall@1"] <= 1 and 0 <= e["mAP"] <= 1 for e in log)
    for e in log:  # the score and what its noise and guard are computed from, per held-out image
        assert e["score"] == pytest.approx(-(e["alignment"] + e["uniformity"]))
        assert len(e["jackknife"]) == len(e["hit"]) == len(e["ap"]) == len(log[0]["ap"]) >= 8
