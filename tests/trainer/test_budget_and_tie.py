"""The time budget's arithmetic, the shipped-config list of ``--help`` and the self-check's tie, without training.

The journeys in ``tests/journeys/test_train_budget.py`` run the same through the real CLI.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from lookalike.trainer import config as config_module
from lookalike.trainer.config import load_config, shipped_configs
from lookalike.trainer.loop import (
    PROBE_MARGIN,
    BudgetTooShort,
    SchedulePlan,
    _refuse_short_budget,
    budget_minutes,
    min_useful_steps,
)
from lookalike.trainer.selfcheck import BEST_EXPORT, MIN_GAIN, SelfCheckLog, noise_band, within_noise
from lookalike.trainer.train_cli import build_parser, main

# ----------------------------------------------------------------------------- --help


def test_help_lists_every_shipped_config_with_its_first_line() -> None:
    text = build_parser().format_help()
    names = sorted(p.stem for p in config_module.CONFIG_DIR.glob("*.yaml"))
    assert "finetune" in names and [n for n, _ in shipped_configs()] == names
    for name, summary in shipped_configs():
        assert not summary.startswith("(no description"), f"{name}.yaml needs a '# ...' first line"
        assert any(line.strip().startswith(f"{name} ") and summary.split()[0] in line for line in text.splitlines())


def test_a_config_without_a_summary_line_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bare.yaml").write_text("train:\n  epochs: 1\n")
    (tmp_path / "good.yaml").write_text("# Does a thing.\n# More.\ntrain:\n  epochs: 1\n")
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    assert shipped_configs() == [
        ("bare", "(no description: start the file with a '# ...' line)"),
        ("good", "Does a thing."),
    ]


# ----------------------------------------------------------------------------- the budget


def _plan(steps: int = 600, warmup: int = 20, check_seconds: float = 25.0, left: float = 120.0) -> SchedulePlan:
    """The reported run: finetune on 285 images (4 steps an epoch, 150 epochs, a checkpoint every 15)."""
    plan = SchedulePlan(steps_per_epoch=4, epochs=steps // 4, total_steps=steps, warmup_steps=warmup,
                        checkpoint_every=15, adapt_checkpoints=True)  # fmt: skip
    plan.check_seconds = check_seconds
    plan.deadline = time.monotonic() + left
    return plan


def _cfg(*overrides: str):
    return load_config(["finetune"], ["data.source=x", "train.max_minutes=2", *overrides])


def test_min_useful_steps_is_the_warmup_unless_set() -> None:
    plan = _plan()
    assert min_useful_steps(_cfg(), plan) == 20
    assert min_useful_steps(_cfg("train.min_steps=50"), plan) == 50
    assert min_useful_steps(_cfg("train.min_steps=5000"), plan) == 600, "never more than the schedule"


def test_the_reported_budget_is_refused_with_one_that_fits() -> None:
    """41 s a step (6:52:42 for 600), 25 s a self-check, 60 s of set-up, 2 minutes: not one step fits."""
    plan, per_step, elapsed = _plan(left=60.0), 41.2 * PROBE_MARGIN, 60.0
    with pytest.raises(BudgetTooShort) as info:
        _refuse_short_budget(_cfg(), plan, 0, per_step, elapsed)
    text = str(info.value)
    assert "--max-minutes 2 is too short for a useful run: 0 training step(s) fit" in text
    assert "at least 20 are needed (the warmup, optim.warmup_steps; train.min_steps=N changes it)" in text
    assert "--allow-short" in text and "45.32s per step" in text
    minutes = budget_minutes(plan, 0, 20, per_step, elapsed)
    assert f"--max-minutes {minutes} would be enough" in text
    assert plan.affordable(minutes * 60 - elapsed, 0, per_step)[0] >= 20, "the suggestion holds the 20 steps"
    fewer = int(minutes / 1.1) - 1
    assert plan.affordable(fewer * 60 - elapsed, 0, per_step)[0] < 20, "and is not padded beyond 10% spare"


def test_allow_short_warns_and_trains(capsys: pytest.CaptureFixture) -> None:
    _refuse_short_budget(_cfg("train.allow_short=true"), _plan(left=60.0), 0, 45.0, 60.0)
    assert "warning: --max-minutes 2 is too short" in capsys.readouterr().out


def test_a_budget_that_fits_the_minimum_passes_and_a_resumed_run_needs_only_the_rest() -> None:
    _refuse_short_budget(_cfg("train.max_minutes=30"), _plan(left=1700.0), 0, 45.0, 100.0)
    _refuse_short_budget(_cfg(), _plan(left=60.0), 20, 45.0, 60.0)  # 20 steps done: the warmup is behind it


def test_the_cli_exits_2_with_the_message(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import lookalike.trainer.loop as loop

    def refuse(cfg: object) -> None:
        raise BudgetTooShort("--max-minutes 2 is too short ... --max-minutes 17 would be enough")

    monkeypatch.setattr(loop, "train", refuse)
    assert main(["--config", "finetune", "--data", "x", "--max-minutes", "2"]) == 2
    assert "lookalike train: error: --max-minutes 2 is too short" in capsys.readouterr().err


def test_the_plan_is_capped_to_the_budget_and_refit_both_ways_up_to_the_config() -> None:
    plan = _plan(left=1200.0, check_seconds=10.0)
    assert plan.fit_to_budget(0, 10.0) is not None
    capped = plan.total_steps
    assert 80 <= capped < 120 and plan.epochs == -(-capped // 4) and plan.checks >= 1
    assert plan.eta(0, 10.0) <= 1200, "the ETA printed is the capped run's, within the budget"
    assert plan.warmup_steps <= max(1, capped // 10)
    note = plan.fit_to_budget(0, 5.0)  # the first steps ran faster than the probe: lengthened
    assert note is not None and plan.total_steps > capped
    assert plan.fit_to_budget(0, 0.01) is not None and plan.total_steps == 600, "never past the config"
    assert (plan.epochs, plan.warmup_steps, plan.checkpoint_every) == (150, 20, 15), "the config's own plan"


def test_a_run_that_slows_down_is_replanned_not_cut() -> None:
    plan = _plan(left=100.0, check_seconds=5.0)
    plan.total_steps, plan.epochs, plan.checkpoint_every = 40, 10, 5
    assert plan.shorten_to_fit(8, 2, 1.0) is None, "32 steps x 1.1 s and 2 checks fit in 100 s"
    note = plan.shorten_to_fit(8, 2, 3.0)
    assert note is not None and "schedule shortened to" in note
    assert plan.total_steps < 40 and plan.epochs == 2 + -(-(plan.total_steps - 8) // 4)
    assert plan.eta(8, 3.0 * PROBE_MARGIN) <= 100
    plan.deadline = time.monotonic() + 1.0  # nothing more fits: the plan ends now, with a final checkpoint
    plan.shorten_to_fit(8, 2, 3.0)
    assert (plan.total_steps, plan.epochs) == (8, 2)


# ----------------------------------------------------------------------------- the tie


def _entry(epoch: int, values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    return {"score": m, "mAP": 0.8, "recall@1": 1.0, "alignment": 0.5, "uniformity": -0.5 - m,
            "jackknife": list((v.sum() - v) / (len(v) - 1)), "hit": [1] * len(v)}  # fmt: skip


def _log(tmp_path: Path, min_gain: float, *scores: np.ndarray) -> SelfCheckLog:
    log = SelfCheckLog(tmp_path, tolerance_se=1.0, min_gain=min_gain)
    for epoch, values in enumerate(scores):
        name = "start_export.pt" if epoch == 0 else f"epoch_{epoch}_export.pt"
        (tmp_path / name).write_bytes(name.encode())
        log.add(epoch, epoch, tmp_path / name, _entry(epoch, values))
    return log


def test_a_hair_above_the_start_is_a_tie_and_the_start_is_served(tmp_path: Path) -> None:
    """Two steps from the start: +0.002 on every held-out image, so a standard error of 0 alone calls it a gain."""
    base = np.linspace(1.6, 1.9, 28)
    log = _log(tmp_path, MIN_GAIN, base, base + 0.002)
    assert log.best is log.start and (tmp_path / BEST_EXPORT).read_bytes() == b"start_export.pt"
    text = log.verdict()
    assert "tie: the fine-tune is within the self-check's noise (±0.010) of its start (epoch 1: +0.002 score)" in text
    assert "serving the start model" in text and "(best_export.pt = start)" in text and "beats" not in text
    se_only = tmp_path / "se_only"
    se_only.mkdir()
    assert "beats its start by +0.002" in _log(se_only, 0.0, base, base + 0.002).verdict(), "the report, by SE alone"


def test_the_noise_band_is_the_larger_of_the_se_and_min_gain() -> None:
    base = np.linspace(1.6, 1.9, 20)
    start, wobbly = _entry(0, base), _entry(1, base + np.where(np.arange(20) % 2 == 0, 0.1, -0.06))
    se_band = noise_band(wobbly, start, 1.0)
    assert se_band > 0.01 and noise_band(wobbly, start, 1.0, 0.01) == se_band
    assert noise_band(wobbly, start, 1.0, 1.0) == 1.0
    assert within_noise(start, _entry(2, base + 0.005), 1.0, 0.01)
    assert not within_noise(start, _entry(2, base + 0.05), 1.0, 0.01), "a clear gain still beats the start"


def test_min_gain_is_a_checked_config_key() -> None:
    assert load_config([], ["data.source=x"]).selfcheck.min_gain == MIN_GAIN
    with pytest.raises(ValueError, match="selfcheck.min_gain must be >= 0"):
        load_config([], ["data.source=x", "selfcheck.min_gain=-1"]).validate()
    with pytest.raises(ValueError, match="train.min_steps must be > 0"):
        load_config([], ["data.source=x", "train.min_steps=0"]).validate()
