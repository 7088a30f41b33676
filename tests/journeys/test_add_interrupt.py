"""Ctrl-C during ``lookalike add`` stops it with one line saying how far it got and how to finish.

Before, a KeyboardInterrupt traceback from deep inside the import threads, and no word of what
was registered or that ``--resume`` adds the rest.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from cli import LOOKALIKE, run, serving
from lookalike.client import ClientError, LookalikeClient
from PIL import Image

COUNT = 300


def noise_pictures(folder: Path, count: int) -> None:
    """Small PNGs of random noise: each one different, quick to write, real work for the server."""
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"n{i:04d}.png")


def stored(address: str, db: str) -> int:
    with LookalikeClient(address, timeout=5) as c:
        try:
            return c.get_database(db).image_count
        except ClientError:
            return 0


def test_ctrl_c_during_add_prints_one_line_and_exits_130_and_resume_adds_the_rest(tmp_path):
    noise_pictures(tmp_path / "noise", COUNT)
    with serving(tmp_path / "data") as (_, address):
        assert run("db", "create", "noise", "--server", address).returncode == 0
        argv = [*LOOKALIKE, "add", "--db", "noise", str(tmp_path / "noise"), "--batch", "16", "--server", address]
        add = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while stored(address, "noise") == 0 and add.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert add.poll() is None, f"add ended before it could be interrupted: {add.communicate()}"
        add.send_signal(signal.SIGINT)
        out, err = add.communicate(timeout=60)
        assert add.returncode == 130, (out, err)
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        said = re.fullmatch(r"lookalike: interrupted: (\d+) of 300 registered.*; re-run with --resume to add the rest",
                            lines[0])  # fmt: skip
        assert said, lines[0]
        assert int(said.group(1)) <= stored(address, "noise") < COUNT

        rest = run("add", "--db", "noise", "--resume", str(tmp_path / "noise"), "--server", address)
        assert rest.returncode == 0, rest.stderr
        assert stored(address, "noise") == COUNT  # every image once: none lost, none twice
