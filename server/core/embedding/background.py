"""Background embedding: a model in a child process at idle CPU priority, for work nobody waits on (reindex).

A reindex on the server's own model workers shares the interpreter lock with every call the server answers and
runs at their priority. A child process has its own lock, and at SCHED_IDLE (Linux; nice 19 elsewhere) the kernel
gives it only what normal-priority threads leave. Measured (``bench/reindex_ab.py``, the two modes in interleaved
rounds on a 2-vCPU VM): a reindex runs at 1.07x the add rate against 0.85x inline; the search p99 beside it is
about 2x idle either way (7.8 ms against 7.4 ms; rounds spread 1.4-2.6x), which busy threads of any priority cause
on that machine (SCHED_IDLE spinners alone: 1.3-2.2x).

The child loads the same model file with the same settings as the server's embedder (``Embedder.spec``) on the
CPU, so its vectors are the server's: the same code in the same execution mode. It has the server's whole
budget of single-threaded model workers (``lookalike serve`` gives them; a server of two models gives each only
half), which share each page: at idle priority it only takes what the server's calls leave. With one worker
a reindex ran at 0.68-0.97x the add rate beside searches, with two at 0.96-1.33x, the search p99 about 1 ms
higher (``bench/reindex.py``, 2026-12-08). It decodes one page while the model runs the one before, as the
server's decode pool and model workers do. It starts on first use (torch and
the model: a few seconds), is kept for ``idle_s`` after its last page, and stops with the server; its
environment carries no secrets, and it exits when the server's end of the pipe closes.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe
from typing import TYPE_CHECKING, Any

import numpy as np
from lookalike.server.core.errors import ErrorKind, LookalikeError
from lookalike.server.logging_setup import active_settings, configure_logging

if TYPE_CHECKING:
    from lookalike.server.core.embedding.embedder import Embedder

log = logging.getLogger(__name__)
child_log = logging.getLogger("lookalike.background_embedder")  # the child's lines (its __name__ is "__main__")

BACKGROUND_MODES = ("process", "inline")
START_TIMEOUT_S = 300.0  # importing torch and loading a model on a busy machine
# glibc keeps the model's freed activation buffers instead of unmapping them and faulting in zeroed pages again
# for the next page: the child's system time fell from 240 to 25-29 ticks in a 1,024-image reindex (16% of its
# CPU to 2%), kernel time a search cannot preempt on a PREEMPT_NONE kernel. The memory stays with the child, which
# exits when idle.
CHILD_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30),
                "MALLOC_TOP_PAD_": str(256 << 20)}  # fmt: skip
SECRET_ENV = ("LOOKALIKE_TOKEN", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "LOOKALIKE_MILVUS_TOKEN")


@dataclass
class Embedded:
    """One submitted page, embedded: ``vectors[j]`` is image ``rows[j]``; ``errors``: index -> reason of those that
    could not be decoded (images given as None are in neither)."""

    vectors: np.ndarray
    rows: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)


def embed_page(embedder: Embedder, images: Sequence[bytes | None]) -> Embedded:
    """Decode and embed ``images`` (None: skipped), a bad image's reason kept in place of its vector."""
    return _finish(embedder, *_prepare(embedder, images))


def _prepare(embedder: Embedder, images: Sequence[bytes | None]) -> tuple[list[int], list[Any]]:
    """The indexes of the images given (not None) and each one decoded, or its error."""
    given = [k for k, data in enumerate(images) if data is not None]
    return given, embedder.prepare_many([images[k] for k in given], field="image")  # type: ignore[misc]


def _finish(embedder: Embedder, given: list[int], prepared: list[Any]) -> Embedded:
    good = [(k, p) for k, p in zip(given, prepared, strict=True) if not isinstance(p, LookalikeError)]
    errors = {k: p.reason for k, p in zip(given, prepared, strict=True) if isinstance(p, LookalikeError)}
    vectors = embedder.embed_prepared([p for _, p in good])
    return Embedded(vectors, [k for k, _ in good], errors)


class InlineEmbedder:
    """Background embedding on the server's own workers (a GPU, or ``--reindex-worker inline``)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def submit(self, images: Sequence[bytes | None]) -> Future[Embedded]:
        done: Future[Embedded] = Future()
        try:
            done.set_result(embed_page(self.embedder, images))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def close(self) -> None:
        pass


class _Child:
    """One started child: its process, the server's end of its pipe, and whether its model answered."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.proc, self.conn = proc, conn
        self.ready = threading.Event()
        self.model_workers = 0  # as the child reports them when its model answers
        self.failure = ""
        self.send_lock = threading.Lock()  # a page is sent whole; never under ChildEmbedder's lock (see submit)

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.failure

    def stop(self) -> None:
        try:
            with self.send_lock:
                self.conn.send(None)
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


class ChildEmbedder:
    """The model in a child process at idle priority; pages submitted are embedded in order."""

    def __init__(self, spec: dict[str, Any], idle_s: float, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.spec = spec
        self.idle_s = idle_s
        self.start_timeout_s = start_timeout_s
        self.starts = 0  # child processes started (for tests and logs)
        self._lock = threading.Lock()  # the child, the futures, the idle timer; never held while sending a page
        self._child: _Child | None = None
        self._pending: dict[int, Future[Embedded]] = {}
        self._seq = 0
        self._idle_timer: threading.Timer | None = None

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.proc.pid if child is not None and child.alive() else None

    @property
    def model_workers(self) -> int:
        """The running child's model workers (0 when none runs)."""
        child = self._child
        return child.model_workers if child is not None and child.alive() else 0

    def submit(self, images: Sequence[bytes | None]) -> Future[Embedded]:
        """Queue one page; its future holds the vectors, or fails with BACKGROUND_EMBEDDER_FAILED if the child
        exits. (The child answers while it reads, so a page is sent outside the lock the answers take.)"""
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            child = self._started()
            self._seq += 1
            seq = self._seq
            future: Future[Embedded] = Future()
            self._pending[seq] = future
        try:
            with child.send_lock:
                child.conn.send(("embed", seq, list(images)))
        except (OSError, ValueError) as exc:
            with self._lock:
                self._pending.pop(seq, None)
            raise _exited(f"could not be sent a page ({exc})") from None
        return future

    def _started(self) -> _Child:
        """The running child, starting one (and waiting until its model answers) when there is none."""
        child = self._child
        if child is not None and child.alive():
            return child
        if child is not None:
            child.stop()
        self._child = None
        ours, theirs = Pipe(duplex=True)
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV} | CHILD_MALLOC
        level, fmt = active_settings()  # its lines as the server's: --log-format json stays one object a line
        cmd = [sys.executable, "-m", __name__, str(theirs.fileno()), level, fmt]
        proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        child = _Child(proc, ours)
        self.starts += 1
        ours.send(self.spec)
        threading.Thread(target=self._receive, args=(child,), name="background-embedder", daemon=True).start()
        if not child.ready.wait(self.start_timeout_s) or child.failure:
            why = child.failure or f"did not load its model within {self.start_timeout_s:g} s"
            child.stop()
            raise _exited(why)
        self._child = child
        log.info("background embedder for %s started (pid %d, %d model workers)", self.spec.get("model_path"),
                 proc.pid, child.model_workers)  # fmt: skip
        return child

    def _receive(self, child: _Child) -> None:
        """Complete each page's future as the child answers; when it exits, fail what is left."""
        why = "exited"
        try:
            while True:
                message = child.conn.recv()
                kind = message[0]
                if kind == "ready":
                    child.model_workers = int(message[1])
                    child.ready.set()
                    continue
                if kind == "failed":
                    why = message[1]
                    break
                with self._lock:
                    future = self._pending.pop(message[1], None)
                    if not self._pending:
                        self._arm_idle_timer()
                if future is None:
                    continue
                if kind == "done":
                    future.set_result(Embedded(message[2], message[3], message[4]))
                else:
                    future.set_exception(LookalikeError(ErrorKind(message[2]), message[3], message[4]))
        except (EOFError, OSError):
            pass
        child.failure = why
        child.ready.set()  # a start waiting for the model learns why at once
        with self._lock:
            if self._child is child:
                left, self._pending = self._pending, {}
                for future in left.values():
                    future.set_exception(_exited(why))

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = threading.Timer(self.idle_s, self._stop_if_idle)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            child = self._child if not self._pending else None
            self._child = None if child is not None else self._child
        if child is not None:
            log.info("background embedder idle for %g s: stopped", self.idle_s)
            child.stop()

    def close(self) -> None:
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            child, self._child = self._child, None
            left, self._pending = self._pending, {}
        for future in left.values():
            future.set_exception(_exited("was stopped with the server"))
        if child is not None:
            child.stop()


def _exited(why: str) -> LookalikeError:
    return LookalikeError(ErrorKind.UNAVAILABLE, "BACKGROUND_EMBEDDER_FAILED",
                          f"the background embedding process {why}; the operation can be started again "
                          "(or serve with --reindex-worker inline)")  # fmt: skip


# -- the child ---------------------------------------------------------------------------------------------------
def lower_priority() -> None:
    """Run this process (every thread it has, e.g. numpy's BLAS pool, and those it starts later, which inherit
    it) only when a core is otherwise idle."""
    try:
        for task in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(task), os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        os.nice(19)


def child(fd: int) -> int:
    lower_priority()  # before torch starts its threads: they inherit it
    conn = Connection(fd)
    try:
        spec = conn.recv()
    except EOFError:
        return 0
    try:
        import torch

        torch.set_num_threads(int(spec.get("model_threads") or 1))
        torch.set_num_interop_threads(1)
        from lookalike.server.core.embedding.embedder import Embedder

        embedder = Embedder(**spec)
    except Exception as exc:  # told to the server, which fails the operation with it
        why = f"could not load the model: {type(exc).__name__}: {exc}"[:2000]
        child_log.error("%s", why)
        conn.send(("failed", why))
        return 1
    conn.send(("ready", embedder.batcher.workers))
    send_lock = threading.Lock()
    pages: queue.Queue[tuple[int, list[int], list[Any]] | None] = queue.Queue(maxsize=1)

    def forward() -> None:  # the model on this page while the main thread decodes the next
        while (item := pages.get()) is not None:
            seq, given, prepared = item
            try:
                out = _finish(embedder, given, prepared)
                reply: tuple[Any, ...] = ("done", seq, out.vectors, out.rows, out.errors)
            except LookalikeError as err:
                reply = ("error", seq, err.kind.value, err.reason, str(err))
            except Exception as exc:
                reply = ("error", seq, ErrorKind.INTERNAL.value, "MODEL_CALL_FAILED", f"{type(exc).__name__}: {exc}")
            try:
                with send_lock:
                    conn.send(reply)
            except (OSError, ValueError):  # the server is gone (even killed): so is this process
                os._exit(0)

    worker = threading.Thread(target=forward, name="background-forward", daemon=True)
    worker.start()
    try:
        while (message := conn.recv()) is not None:
            _, seq, images = message
            pages.put((seq, *_prepare(embedder, images)))
    except (EOFError, OSError):
        pass
    pages.put(None)
    worker.join()
    embedder.close()
    return 0


if __name__ == "__main__":
    configure_logging(*(sys.argv[2:4] if len(sys.argv) >= 4 else ("warning", "text")))
    sys.exit(child(int(sys.argv[1])))
