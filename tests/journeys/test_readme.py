"""The README's quick start and Python client example run as printed, pasted as one block each.

Before, the quick start went on right after ``make serve &`` (so its first commands raced the
server's start and failed), and the Python example used ``paths`` without defining it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from photos import crop, encode, photo

README = Path(__file__).resolve().parents[2] / "README.md"
INSTALL = "make install && . .venv/bin/activate"  # the one line the test does itself: the venv is already there


def block(heading: str, language: str) -> str:
    """The first fenced ``language`` block after ``heading``."""
    text = README.read_text()
    start = text.index(heading)
    found = re.search(rf"^```{language}\n(.*?)^```", text[start:], re.S | re.M)
    assert found, f"no ```{language} block under {heading!r} in README.md"
    return found.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The files the quick start names, in the current directory as it assumes."""
    pictures = {"a": photo("chelsea"), "b": crop(photo("chelsea"), 0.8), "front": photo("astronaut"),
                "back": crop(photo("astronaut"), 0.7), "query": crop(photo("rocket"), 0.7, 0.1)}  # fmt: skip
    for name, picture in pictures.items():
        (tmp_path / f"{name}.jpg").write_bytes(encode(picture))
    (tmp_path / "catalogue").mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        (tmp_path / "catalogue" / f"{name}.jpg").write_bytes(encode(photo(name)))
    return tmp_path


def test_quick_start_then_python_example_run_as_printed(workdir):
    shell = block("## Quick start (CLI)", "sh")
    assert shell.splitlines()[0].split("#")[0].strip() == INSTALL
    script = "\n".join(["set -e", *shell.splitlines()[1:]])
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "LOOKALIKE_PORT": str(port), "LOOKALIKE_SERVER": f"127.0.0.1:{port}"}  # fmt: skip
    env.pop("LOOKALIKE_DATA_DIR", None)
    out, err = workdir / "quickstart.out", workdir / "quickstart.err"
    with out.open("w") as stdout, err.open("w") as stderr:  # files: the server it starts outlives the shell
        shell_proc = subprocess.Popen(["bash", "-c", script], cwd=workdir, env=env, stdout=stdout, stderr=stderr,
                                      start_new_session=True)  # fmt: skip
    try:
        rc = shell_proc.wait(timeout=300)
        said = out.read_text()
        assert rc == 0, f"the quick start failed ({rc}):\n{said}\n{err.read_text()}"
        assert "similarity " in said and "created database shop" in said
        assert "registered 3 of 3 images" in said and "registered 2 of 2 images" in said
        assert said.splitlines()[-1].startswith("[{") and '"name": "shop"' in said.splitlines()[-1]

        example = subprocess.run([sys.executable, "-c", block("### Python (gRPC)", "python")], cwd=workdir, env=env,
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert example.returncode == 0, example.stderr
        printed = example.stdout.splitlines()
        assert printed[0] == "3 registered, 0 failed"
        assert printed[1].split()[1:3] == ["rocket", "0"] and printed[1].endswith("catalogue/rocket.jpg")
        assert printed[-1] == "INVALID_ARGUMENT IMAGE_UNDECODABLE"
    finally:
        stop_group(shell_proc.pid)


def stop_group(pgid: int) -> None:
    """Stop the ``lookalike serve &`` the quick start left running, and wait until it is gone."""
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.2)
            os.killpg(pgid, 0)  # raises once no process of the group is left
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
