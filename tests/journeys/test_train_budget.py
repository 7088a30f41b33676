"""A first ``lookalike train`` with a time budget, as a new user runs it (``python -m lookalike train``).

The report: ``--config finetune --max-minutes 2`` on 285 images printed a 600-step plan with an ETA of
6:52:42, ran 2 steps, and called a +0.002 difference a gain to serve. Now ``--help`` lists the shipped
configs, a budget too short for a useful run is refused before training with one that would do, the
plan printed under a cap is the capped one, and a difference within the self-check's noise is a tie
that serves the start. The tiny config keeps each run within seconds on a 2-core CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli import run
from photos import PHOTO_NAMES, photo
from PIL import Image

CONFIGS = Path(__file__).parents[2] / "trainer" / "configs"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 JPEGs: random crops of the scikit-image photos, 48-128 px."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(40):
        arr = photo(PHOTO_NAMES[i % len(PHOTO_NAMES)])
        h, w = arr.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = Image.fromarray(arr[top : top + ch, left : left + cw])
        img.thumbnail((int(rng.integers(48, 129)),) * 2)
        img.save(root / f"{i:03d}.jpg", quality=90)
    return root


def _train(images: Path, out: Path, *args: str) -> tuple[int, str, str]:
    proc = run("train", "--config", "tiny", "--data", str(images), "--output", str(out), *args, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_train_help_lists_every_shipped_config_with_its_summary() -> None:
    proc = run("train", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    shipped = sorted(CONFIGS.glob("*.yaml"))
    assert "finetune" in [p.stem for p in shipped]
    for path in shipped:
        summary = path.read_text(encoding="utf-8").splitlines()[0].lstrip("#").strip()
        line = next((ln for ln in proc.stdout.splitlines() if ln.strip().startswith(path.stem + " ")), None)
        assert line is not None, f"{path.stem} is shipped but not in `lookalike train --help`"
        assert " ".join(summary.split()[:4]) in line, (path.stem, line)
    assert "--allow-short" in proc.stdout


def test_a_budget_too_short_is_refused_before_training_with_one_that_would_do(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "short"
    code, stdout, stderr = _train(images, out, "--max-minutes", "0.2", "train.steps=100000", "train.min_steps=5000")
    assert code == 2, stdout + stderr
    assert "too short for a useful run" in stderr and "--allow-short" in stderr
    found = re.search(r"Estimated ([\d.]+)s per step.*--max-minutes (\d+) would be enough", stderr)
    assert found, stderr
    per_step, minutes = float(found[1]), int(found[2])
    assert minutes > 0.2 and minutes * 60 >= 5000 * per_step, "the suggested budget holds the 5000 steps"
    assert "epoch 1" not in stdout and "training mocov2" not in stdout, "refused before any step"
    assert not (out / "last.pth").exists() and not list(out.glob("epoch_*"))

    code, stdout, stderr = _train(images, out, "--max-minutes", "0.2", "train.steps=100000", "train.min_steps=5000",
                                  "--allow-short")  # fmt: skip
    assert code == 0, stdout + stderr
    assert "training anyway (--allow-short)" in stdout and (out / "last.pth").is_file()
    assert "self-check at the start" not in stdout, "the refused run's start check is reused"


def _announced_steps(stdout: str) -> list[int]:
    """Every total the run announced, in order: the plan line, then each re-fit."""
    pattern = r"epochs = (\d+) steps \(|schedule (?:fitted|shortened) to (\d+) steps"
    return [int(a or b) for a, b in re.findall(pattern, stdout)]


def test_the_plan_printed_under_a_cap_is_the_run(images: Path, tmp_path: Path) -> None:
    """The plan line names the capped steps and their ETA within the budget; the run ends on the last plan printed.

    A run that turns out slower than planned is re-planned at its epochs' ends and says so. A machine
    whose load jumps within an epoch (this 2-core one, shared, went from 0.9 to 5 s a step) can still
    leave the clock to stop the run; the last line then names the plan it was cut from.
    """
    # train.min_steps=1: a loaded machine may fit few steps, and the refusal is the test above
    code, stdout, stderr = _train(images, tmp_path / "cap", "--max-minutes", "0.6", "train.steps=100000",
                                  "train.min_steps=1")  # fmt: skip
    assert code == 0, stdout + stderr
    plan = next(line for line in stdout.splitlines() if line.startswith("training "))
    found = re.search(
        r"= (\d+) steps \(warmup \d+; capped by --max-minutes 0.6 from 100000\).*ETA (\d+):(\d\d):(\d\d)", plan
    )
    assert found, plan
    steps = int(found[1])
    eta = int(found[2]) * 3600 + int(found[3]) * 60 + int(found[4])
    assert 1 <= steps < 100000 and eta <= 36, plan
    announced = _announced_steps(stdout)
    assert announced[0] == steps
    done = re.search(r"done: \d+ epoch\(s\), (\d+) step\(s\)", stdout)
    if done:
        assert int(done[1]) == announced[-1], stdout
    else:
        cut = re.search(r"stopped at the time budget .* after epoch \d+, step (\d+) of (\d+)", stdout)
        assert cut and int(cut[2]) == announced[-1] and 1 <= int(cut[1]) < announced[-1], stdout


def test_a_difference_within_the_noise_is_a_tie_and_serves_the_start(images: Path, tmp_path: Path) -> None:
    """``selfcheck.min_gain=100`` widens the noise band past any difference the tiny run can make."""
    out = tmp_path / "tie"
    code, stdout, stderr = _train(images, out, "selfcheck.min_gain=100", "train.steps=4")  # one epoch, one check
    assert code == 0, stdout + stderr
    log = [json.loads(line) for line in (out / "selfcheck.jsonl").read_text().splitlines()]
    assert log[0]["epoch"] == 0 and len(log) >= 2
    assert log[-1]["score"] != log[0]["score"], "a real difference, called a tie"
    assert "tie: the fine-tune is within the self-check's noise (±100.000) of its start" in stdout, stdout
    assert "serving the start model" in stdout and "(best_export.pt = start)" in stdout
    assert "beats its start" not in stdout
    assert (out / "best_export.pt").read_bytes() == (out / "start_export.pt").read_bytes()
