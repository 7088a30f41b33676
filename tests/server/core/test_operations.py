"""Long-running operations expire: a finished one is removed ``retention_s`` after it ended, state and
results (``server/core/operations.py``); running ones and recent ones stay, and 0 keeps everything."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from lookalike.server.core.errors import LookalikeError
from lookalike.server.core.operations import Context, Operations

DAY = 24 * 3600.0


def _finished(tmp_path: Path, ident: str, ended: float, state: str = "SUCCEEDED") -> None:
    folder = tmp_path / ident
    folder.mkdir()
    record = {"id": ident, "kind": "count", "database": "db", "request": {}, "state": state,
              "create_time": ended - 60, "update_time": ended, "result": {"n": 1}}  # fmt: skip
    (folder / "operation.json").write_text(json.dumps(record))
    (folder / "clusters.jsonl").write_bytes(b"{}\n" * 1000)  # a result file, removed with it


def test_a_finished_operation_older_than_the_retention_is_removed_at_start_up(tmp_path: Path) -> None:
    now = time.time()
    _finished(tmp_path, "0a0a", now - 8 * DAY)
    _finished(tmp_path, "0b0b", now - 8 * DAY, state="FAILED")
    _finished(tmp_path, "0c0c", now - 6 * DAY)
    ops = Operations(tmp_path, {"count": lambda ctx: {}}, retention_s=7 * DAY)
    ops.recover()
    with pytest.raises(LookalikeError) as err:
        ops.get("operations/0a0a")
    assert err.value.reason == "OPERATION_NOT_FOUND"
    assert not (tmp_path / "0a0a").exists() and not (tmp_path / "0b0b").exists()
    assert ops.get("operations/0c0c").result == {"n": 1} and (tmp_path / "0c0c" / "clusters.jsonl").exists()
    listed, _ = ops.list("", 100, "")
    assert [o.id for o in listed] == ["0c0c"]


def test_listing_and_starting_expire_what_ended_meanwhile_and_never_a_running_one(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(ctx: Context) -> dict[str, int]:
        while not release.wait(0.05):
            ctx.check()
        return {"n": 2}

    ops = Operations(tmp_path, {"count": lambda ctx: {"n": 1}, "slow": slow}, retention_s=60.0)
    quick = ops.wait(ops.start("count", "db", {}).name, 10)
    running = ops.start("slow", "db", {})
    assert quick.done and not running.done
    assert ops.expire(now=time.time() + 30) == 0  # not yet
    assert ops.expire(now=time.time() + 3600) == 1  # the finished one; the running one however old it is
    assert {o.id for o in ops.list("", 100, "")[0]} == {running.id}
    assert not (tmp_path / quick.id).exists() and (tmp_path / running.id).exists()
    release.set()
    assert ops.wait(running.name, 10).result == {"n": 2}
    ops.close()


def test_retention_zero_keeps_finished_operations_until_deleted(tmp_path: Path) -> None:
    _finished(tmp_path, "0d0d", time.time() - 400 * DAY)
    ops = Operations(tmp_path, {"count": lambda ctx: {}}, retention_s=0.0)
    ops.recover()
    assert ops.expire(now=time.time() + 1000 * DAY) == 0
    assert ops.get("operations/0d0d").done
    ops.delete("operations/0d0d")
    assert not (tmp_path / "0d0d").exists()


def test_a_succeeded_operation_reads_100_percent_whatever_its_last_report_said(tmp_path: Path) -> None:
    """A runner's last report may stop short of the end (a reindex reports its comparing stage at
    0.99); a succeeded operation shows all of it done, a failed or cancelled one what it reached."""

    def stops_short(ctx: Context) -> dict[str, int]:
        ctx.report(99, 100, unit="queries", stage="comparing", fraction=0.99)
        return {"n": 1}

    def fails(ctx: Context) -> dict[str, int]:
        ctx.report(3, 10, unit="images", stage="embedding")
        raise RuntimeError("disk on fire")

    ops = Operations(tmp_path, {"short": stops_short, "fails": fails}, retention_s=60.0)
    done = ops.wait(ops.start("short", "db", {}).name, 10)
    assert done.progress["fraction"] == 1.0 and done.progress["completed"] == 100
    assert done.progress["eta_seconds"] == 0.0 and done.progress["stage"] == "comparing"
    failed = ops.wait(ops.start("fails", "db", {}).name, 10)
    assert failed.progress["fraction"] == 0.3 and failed.progress["completed"] == 3
    saved = json.loads((tmp_path / done.id / "operation.json").read_text())
    assert saved["progress"]["fraction"] == 1.0
    ops.close()


def test_a_delete_as_soon_as_an_operation_is_done_leaves_no_folder(tmp_path: Path) -> None:
    """The final state is set and saved under one lock: a delete (or expiry) that sees the operation done
    comes after its last save, which would otherwise bring the deleted folder back (CI caught the expiry)."""
    import sys

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race window is a few bytecodes
    ops = Operations(tmp_path, {"count": lambda ctx: {"n": 1}}, retention_s=60.0)
    try:
        for _ in range(300):
            op = ops.start("count", "db", {})
            while not op.done:  # no lock: as a caller polling GetOperation
                pass
            ops.delete(op.name)
            for _ in range(100):  # the runner thread ends right after its save
                if op.id not in ops._running:
                    break
                time.sleep(0.001)
            assert not (tmp_path / op.id).exists(), op.id
    finally:
        sys.setswitchinterval(before)
        ops.close()
