"""Driving the real CLI as a person would: ``python -m lookalike ...`` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOOKALIKE = [sys.executable, "-m", "lookalike"]


def stored_keys(address: str, db: str) -> list[tuple[str, int]]:
    """Every (group_id, intra_id) the server holds in ``db``, sorted: what was really stored."""
    from lookalike.client import LookalikeClient

    with LookalikeClient(address) as c:
        return sorted((i.key.group_id, i.key.intra_id) for i in c.list_images(db))


def picture(folder: Path, name: str = "chelsea") -> Path:
    """A real photo written to ``folder/name.jpg``."""
    from photos import encode, photo

    path = folder / f"{name}.jpg"
    path.write_bytes(encode(photo(name)))
    return path


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOKALIKE, *args], capture_output=True, text=True, timeout=timeout)


@contextmanager
def serving(data: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``lookalike serve`` on a free port; yields (process, "host:port") once it listens."""
    proc = subprocess.Popen([*LOOKALIKE, "serve", "--port", "0", "--data-dir", str(data), "--log-level", "warning",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("lookalike: listening on"):
            proc.kill()
            raise AssertionError(f"server did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        address = line.rsplit(" ", 1)[1].strip().removeprefix("https://")  # https:// when it uses TLS
        while "ready" not in line:
            line = proc.stdout.readline() if proc.stdout else "ready"
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
