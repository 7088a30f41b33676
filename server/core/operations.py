"""Long-running operations (AIP-151): work that outlives a call, with progress, cancel and resume.

Each operation is a folder under the server's data directory (``operations/<id>/``) holding
``operation.json`` (what was asked, where it stands) and whatever checkpoints its runner writes.
Files are written whole and renamed into place, so a ``kill -9`` leaves the last state; at
start-up ``recover`` restarts every operation that was running, and its runner continues from
its own checkpoint. Without a data directory (Milvus, ``--no-persist``) they live in a
temporary folder for the life of the process. A finished operation is removed ``retention_s``
after it ended (``--operation-retention-s``; checked at start-up, and whenever operations are
started or listed), so a server that runs deduplications for months does not keep every
result it ever produced; DeleteOperation removes one sooner.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lookalike.server import defaults
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid, not_found
from lookalike.server.core.paging import decode_token, encode_token, page_size
from lookalike.server.storage.blobs import LocalBlobStore

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, CANCELLED = "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
STATE_FILE = "operation.json"
PREFIX = "operations/"
MAX_WAIT_S = 60.0
SAVE_EVERY_S = 1.0


class Stopping(Exception):
    """The server is shutting down: the runner stops where it is; the operation resumes at the next start."""


class Cancelled(Exception):
    """CancelOperation asked the runner to stop."""


@dataclass
class Operation:
    id: str
    kind: str
    database: str
    request: dict[str, Any]
    state: str = RUNNING
    create_time: float = 0.0
    update_time: float = 0.0
    progress: dict[str, Any] = field(default_factory=dict)  # completed, total, unit, stage, fraction, eta_seconds
    error: dict[str, Any] | None = None  # kind (ErrorKind name), reason, message
    result: dict[str, Any] | None = None
    resumed: int = 0
    cancel_requested: bool = False  # kept on disk: a cancel asked before a crash is not lost by the restart

    @property
    def name(self) -> str:
        return PREFIX + self.id

    @property
    def done(self) -> bool:
        return self.state != RUNNING


class Context:
    """What a runner gets: its folder for checkpoints, the request, progress reports and the stop signals."""

    def __init__(self, ops: Operations, op: Operation, folder: Path) -> None:
        self._ops, self.op, self.folder = ops, op, folder
        self._started, self._rate_from = time.monotonic(), None
        self._saved_at = -SAVE_EVERY_S
        self.cancel = threading.Event()

    @property
    def request(self) -> dict[str, Any]:
        return self.op.request

    def check(self) -> None:
        """Raises ``Cancelled`` or ``Stopping`` between steps; a runner calls it before each block."""
        if self.cancel.is_set():
            raise Cancelled
        if self._ops.stopping.is_set():
            raise Stopping

    def report(self, completed: int, total: int, *, unit: str, stage: str, fraction: float | None = None) -> None:
        """Progress; ``fraction`` of the work when units differ in cost (the ETA follows it)."""
        frac = min(1.0, max(0.0, fraction if fraction is not None else completed / total if total else 0.0))
        elapsed = time.monotonic() - self._started
        if self._rate_from is None:
            self._rate_from = (elapsed, frac)  # measure the rate from the first report of this run (resumes too)
        t0, f0 = self._rate_from
        eta = (elapsed - t0) * (1.0 - frac) / (frac - f0) if frac > f0 and frac < 1.0 else 0.0
        self.op.progress = {"completed": int(completed), "total": int(total), "unit": unit, "stage": stage,
                            "fraction": frac, "eta_seconds": eta}  # fmt: skip
        self.op.update_time = time.time()
        if elapsed - self._saved_at >= SAVE_EVERY_S:  # progress on disk is for humans after a restart: once a second
            self._saved_at = elapsed
            self._ops.save(self.op)


Runner = Callable[[Context], dict[str, Any]]


class Operations:
    """Every operation of this server: start, read, cancel, wait, resume after a restart."""

    def __init__(self, root: Path | None, runners: dict[str, Runner], max_running: int = 2,
                 retention_s: float = defaults.OPERATION_RETENTION_S) -> None:  # fmt: skip
        self._temporary = root is None
        self.root = Path(tempfile.mkdtemp(prefix="lookalike-ops-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.files = LocalBlobStore(self.root)
        self.runners = runners
        self.max_running = max_running
        self.retention_s = retention_s  # 0: finished operations are kept until deleted
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._ops: dict[str, Operation] = {}
        self._running: dict[str, tuple[Context, threading.Thread]] = {}

    # -- life ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Load every operation; restart the ones that were running when the server stopped."""
        for path in sorted(self.root.glob(f"*/{STATE_FILE}")):
            try:
                op = Operation(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("operation state %s unreadable (%s); skipped", path, exc)
                continue
            self._ops[op.id] = op
            if op.state == RUNNING and op.cancel_requested:  # cancelled, then the server stopped before it ended
                op.state = CANCELLED
                self.save(op)
            elif op.state == RUNNING:
                op.resumed += 1
                self.save(op)  # counted even if the server stops again before the runner reports
                log.info("resuming %s (%s of %r)", op.name, op.kind, op.database)
                self._launch(op)
        self.expire()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the runners where they are (they resume at the next start); a temporary folder is removed."""
        self.stopping.set()
        for _, thread in list(self._running.values()):
            thread.join(timeout)
        if self._temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- calls -----------------------------------------------------------------------------
    def start(self, kind: str, database: str, request: dict[str, Any]) -> Operation:
        self.expire()
        with self._lock:
            if len(self._running) >= self.max_running:
                raise LookalikeError(
                    ErrorKind.RESOURCE_EXHAUSTED, "TOO_MANY_OPERATIONS",
                    f"{len(self._running)} of {self.max_running} operations this server runs at once are running "
                    "(--max-operations); wait for one to finish or cancel one",
                )  # fmt: skip
            now = time.time()
            op = Operation(secrets.token_hex(8), kind, database, request, create_time=now, update_time=now)
            self._ops[op.id] = op
            self.save(op, locked=True)
            self._launch(op)
        return op

    def get(self, name: str) -> Operation:
        op = self._ops.get(self._id(name))
        if op is None:
            raise not_found("OPERATION_NOT_FOUND", f"operation {name!r} does not exist (list them: lookalike ops list)")
        return op

    def folder(self, name: str) -> Path:
        return self.root / self.get(name).id

    def list(self, database: str, size: int, token: str) -> tuple[list[Operation], str]:
        size = page_size(size)
        self.expire()
        after = decode_token(token)
        if after is not None and not (isinstance(after, list) and len(after) == 2):
            raise invalid("PAGE_TOKEN_INVALID", "page_token is not one this server issued")
        ops = sorted(self._ops.values(), key=lambda o: (-o.create_time, o.id))
        ops = [o for o in ops if not database or o.database == database]
        if after is not None:
            ops = [o for o in ops if (-o.create_time, o.id) > (-after[0], after[1])]
        page = ops[:size]
        return page, (encode_token([page[-1].create_time, page[-1].id]) if len(ops) > size else "")

    def cancel(self, name: str) -> Operation:
        op = self.get(name)
        running = self._running.get(op.id)
        if running is not None:
            op.cancel_requested = True
            self.save(op)
            running[0].cancel.set()
        return op

    def delete(self, name: str) -> None:
        op = self.get(name)
        if not op.done:
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "OPERATION_RUNNING",
                                 f"{op.name} is running; cancel it first (lookalike ops cancel {op.name})")  # fmt: skip
        with self._lock:
            self._ops.pop(op.id, None)
        shutil.rmtree(self.root / op.id, ignore_errors=True)

    def expire(self, now: float | None = None) -> int:
        """Remove the operations that ended more than ``retention_s`` ago (state, checkpoints, results)."""
        if self.retention_s <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_s
        with self._lock:
            old = [op for op in self._ops.values() if op.done and op.update_time < cutoff]
            for op in old:
                del self._ops[op.id]
        for op in old:
            shutil.rmtree(self.root / op.id, ignore_errors=True)
        if old:
            log.info("removed %d finished operation(s) that ended over %.0f s ago (--operation-retention-s)", len(old),
                     self.retention_s)  # fmt: skip
        return len(old)

    def wait(self, name: str, timeout: float) -> Operation:
        if not (0.0 <= timeout <= MAX_WAIT_S):
            raise invalid("TIMEOUT_INVALID", f"timeout_seconds {timeout} is out of range; use 0-{MAX_WAIT_S:g}")
        op = self.get(name)
        deadline = time.monotonic() + (timeout or MAX_WAIT_S)
        with self._changed:
            while not op.done and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(min(left, 1.0))
        return op

    # -- inside ----------------------------------------------------------------------------
    @staticmethod
    def _id(name: str) -> str:
        ident = name[len(PREFIX) :] if name.startswith(PREFIX) else ""
        if not ident or not ident.isalnum() or len(ident) > 32:
            raise invalid("OPERATION_NAME_INVALID", f"{name[:80]!r} is not an operation name; they look like "
                          "operations/0123456789abcdef")  # fmt: skip
        return ident

    def save(self, op: Operation, *, locked: bool = False) -> None:
        op.update_time = time.time()
        data = json.dumps(asdict(op), sort_keys=True).encode()
        self.files.put(f"{op.id}/{STATE_FILE}", data)
        if not locked:
            with self._changed:
                self._changed.notify_all()

    def _launch(self, op: Operation) -> None:
        ctx = Context(self, op, self.root / op.id)
        thread = threading.Thread(target=self._run, args=(ctx,), name=f"op-{op.kind}-{op.id[:6]}", daemon=True)
        self._running[op.id] = (ctx, thread)
        thread.start()

    def _run(self, ctx: Context) -> None:
        op = ctx.op
        result, error = None, None
        try:
            result = self.runners[op.kind](ctx)
            state = SUCCEEDED
        except Stopping:
            log.info("%s paused at shutdown; it resumes at the next start", op.name)
            self._running.pop(op.id, None)
            return
        except Cancelled:
            state = CANCELLED
        except LookalikeError as err:
            state, error = FAILED, {"kind": err.kind.name, "reason": err.reason, "message": err.message}
        except Exception as exc:  # the operation records why it failed; the server goes on
            log.exception("%s failed", op.name)
            state = FAILED
            error = {"kind": "INTERNAL", "reason": "OPERATION_FAILED", "message": f"{type(exc).__name__}: {exc}"}
        # Done and saved in one step under the lock: a waiter, an expiry or a delete that sees it done never
        # sees it before its last save (a delete followed by that save would bring the folder back).
        with self._changed:
            if state == SUCCEEDED:
                op.result = result
                if op.progress:  # the last report may stop short (a reindex's comparing stage at 0.99): done is all
                    op.progress = {**op.progress, "completed": op.progress.get("total", 0), "fraction": 1.0,
                                   "eta_seconds": 0.0}  # fmt: skip
            elif error is not None:
                op.error = error
            op.state = state  # last: a reader without the lock sees the result before it sees done
            self._running.pop(op.id, None)
            self.save(op, locked=True)
            self._changed.notify_all()
