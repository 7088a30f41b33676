"""A second ``lookalike serve`` on the same data directory, or the same port, stops at once and says why.

Before, both started: requests split between the two servers, and the second one's
shutdown snapshot deleted the first one's open log.
"""

from __future__ import annotations

import subprocess
import time

from cli import LOOKALIKE, serving


def test_a_second_server_on_the_same_data_directory_exits_naming_the_first(tmp_path):
    data = tmp_path / "data"
    with serving(data) as (first, _):
        started = time.monotonic()
        second = subprocess.run([*LOOKALIKE, "serve", "--port", "0", "--data-dir", str(data)], capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert second.returncode == 1
        assert f"PID {first.pid}" in second.stderr and "in use" in second.stderr
        assert "--data-dir" in second.stderr  # what to do about it
        assert "Traceback" not in second.stderr
        assert time.monotonic() - started < 60
        assert first.poll() is None  # the first one keeps serving
        wal = list((data / "wal").glob("*.log"))
        assert wal and all(p.exists() for p in wal)  # and keeps its log


def test_a_second_server_on_the_same_port_exits(tmp_path):
    with serving(tmp_path / "a") as (first, address):
        port = address.rsplit(":", 1)[1]
        second = subprocess.run([*LOOKALIKE, "serve", "--port", port, "--data-dir", str(tmp_path / "b")],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert "in use" in second.stderr and "--port" in second.stderr
        assert first.poll() is None


def test_the_lock_goes_with_the_process_even_after_kill_9(tmp_path):
    data = tmp_path / "data"
    with serving(data) as (first, _):
        first.kill()
        first.wait(30)
    with serving(data) as (again, _):  # a crash leaves no stale lock behind
        assert again.poll() is None
