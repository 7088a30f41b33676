"""Micro-batching: concurrent requests share one model call.

Each caller submits a stack of preprocessed images and blocks on a future; ``workers``
threads drain the queue into batches of at most ``max_batch`` images, each waiting at most
``max_wait_s`` for more to arrive once it has one; a request larger than ``max_batch`` is
queued as slices of ``max_batch``, so several workers share it. On a GPU one worker turns N
small calls into one. On a CPU a batch's activations must stay in cache: there per-image cost
rises with the batch (bench/serve.py measured 32-image calls several times slower per image
than 4-image ones), and several single-threaded model calls side by side beat one call spread
over the same cores (bench/model_exec.py --workers: 1.5-3x on 2 cores), so the CPU default is
small batches on one worker per core.

A batch that fails is retried request by request, so one bad request fails only itself.
``close()`` lets the running batch finish, fails every request still queued with a clear
error, and refuses new ones; no caller is left waiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError

import numpy as np
from lookalike.server import defaults
from lookalike.server.core.errors import ErrorKind, LookalikeError

_STOP = object()

# (images in the batch, requests in the batch) after every model call; metrics subscribe here.
BatchObserver = Callable[[int, int], None]


class _Call:
    """A function to run on the worker thread (not a batch)."""

    def __init__(self, fn: Callable[[], object], fut: Future[object]) -> None:
        self.fn, self.fut = fn, fut

    def run(self) -> None:
        if self.fut.set_running_or_notify_cancel():
            try:
                self.fut.set_result(self.fn())
            except Exception as exc:
                self.fut.set_exception(exc)


class BatcherClosed(LookalikeError):
    """The batcher is shutting down; the request was not run (UNAVAILABLE: safe to retry elsewhere)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.UNAVAILABLE, "SHUTTING_DOWN", message)


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = defaults.GPU_MAX_BATCH,
        max_wait_s: float = defaults.BATCH_WAIT_MS / 1000.0,
        name: str = "embedder-batcher",
        workers: int = 1,
        worker_init: Callable[[], object] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._queued_images = 0
        self.model_calls = 0
        self.observers: list[BatchObserver] = []
        self._worker_init = worker_init
        self._threads = [
            threading.Thread(target=self._loop, name=name if workers == 1 else f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    @property
    def workers(self) -> int:
        return len(self._threads)

    @property
    def queue_depth(self) -> int:
        """Images waiting for a model call (not counting the batch running now)."""
        return self._queued_images

    def call_in_worker(self, fn: Callable[[], object]) -> Future[object]:
        """Run ``fn`` on a model thread, between batches (with one worker: for thread-local settings such as
        torch's JIT mode; with several, settings every worker needs belong in ``worker_init``)."""
        fut: Future[object] = Future()
        with self._lock:
            if self._closed:
                fut.set_exception(BatcherClosed("the embedder is shutting down"))
                return fut
            self._queue.put(_Call(fn, fut))
        return fut

    def submit(self, items: np.ndarray) -> Future[np.ndarray]:
        """Queue ``items`` ([n, ...]); the future resolves to the model's [n, D] output.

        More than ``max_batch`` items (with several workers) are queued as slices, so the workers
        run them side by side; the future resolves when every slice has, or fails with the first error.
        """
        if self.workers > 1 and len(items) > self.max_batch:
            return self._submit_sliced(items)
        fut: Future[np.ndarray] = Future()
        with self._lock:  # a request is either queued before close() drains, or refused
            if self._closed:
                fut.set_exception(BatcherClosed("the embedder is shutting down; retry on another server"))
                return fut
            self._queued_images += len(items)
            self._queue.put((items, fut))
        return fut

    def _submit_sliced(self, items: np.ndarray) -> Future[np.ndarray]:
        whole: Future[np.ndarray] = Future()
        parts: list[Future[np.ndarray]] = []
        with self._lock:  # all slices are queued, or none
            if self._closed:
                whole.set_exception(BatcherClosed("the embedder is shutting down; retry on another server"))
                return whole
            for start in range(0, len(items), self.max_batch):
                part: Future[np.ndarray] = Future()
                parts.append(part)
                self._queued_images += len(items[start : start + self.max_batch])
                self._queue.put((items[start : start + self.max_batch], part))
        remaining = [len(parts)]
        done_lock = threading.Lock()

        def settle(_: Future[np.ndarray]) -> None:
            with done_lock:
                remaining[0] -= 1
                if remaining[0] or whole.done():
                    return
            failed = next((p for p in parts if p.cancelled() or p.exception() is not None), None)
            try:
                if failed is not None:
                    whole.set_exception(failed.exception() if not failed.cancelled() else CancelledError())
                elif whole.set_running_or_notify_cancel():
                    whole.set_result(np.concatenate([p.result() for p in parts]))
            except InvalidStateError:  # the caller cancelled the whole meanwhile
                pass

        def cancel_parts(f: Future[np.ndarray]) -> None:
            if f.cancelled():
                for p in parts:
                    p.cancel()

        whole.add_done_callback(cancel_parts)
        for p in parts:
            p.add_done_callback(settle)
        return whole

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new requests, fail queued ones, wait for the running batch (at most ``timeout``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._fail_queued()  # nothing can be queued any more: fail what waits, then stop the workers
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout=timeout)
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                continue
            if isinstance(item, _Call):
                item.fut.set_exception(BatcherClosed("the embedder shut down before this call ran"))
                continue
            items, fut = item  # type: ignore[misc]
            with self._lock:
                self._queued_images -= len(items)
            if fut.set_running_or_notify_cancel():
                fut.set_exception(BatcherClosed("the embedder shut down before this request ran; retry"))

    def _take(self, block: bool, timeout: float | None = None) -> object:
        item = self._queue.get(block=block, timeout=timeout)
        while isinstance(item, _Call):  # run at once, in order, and keep building the batch
            item.run()
            item = self._queue.get(block=block, timeout=timeout)
        if item is not _STOP:
            with self._lock:
                self._queued_images -= len(item[0])  # type: ignore[index]
        return item

    def _loop(self) -> None:
        if self._worker_init is not None:
            self._worker_init()
        while True:
            first = self._take(True)
            if first is _STOP:
                return
            pending = [first]
            count = len(first[0])  # type: ignore[index]
            stop = False
            while count < self.max_batch:
                try:
                    nxt = self._take(True, self.max_wait_s) if self.max_wait_s > 0 else self._take(False)
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                pending.append(nxt)
                count += len(nxt[0])  # type: ignore[index]
            self._run(pending)  # type: ignore[arg-type]
            if stop:
                return

    def _call(self, batch: np.ndarray, requests: int) -> np.ndarray:
        """One model call per ``max_batch`` images: a large request (a bulk chunk) is split, never run whole."""
        parts = []
        for start in range(0, len(batch), self.max_batch):
            part = batch[start : start + self.max_batch]
            self.model_calls += 1
            out = self._run_batch(part)
            if len(out) != len(part):
                raise RuntimeError(f"the model returned {len(out)} rows for {len(part)} images")
            for observe in self.observers:
                try:
                    observe(len(part), requests)
                except Exception:  # metrics must never fail a request
                    pass
            parts.append(out)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, pending: list[tuple[np.ndarray, Future[np.ndarray]]]) -> None:
        live = [(x, f) for x, f in pending if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            batch = np.concatenate([x for x, _ in live]) if len(live) > 1 else live[0][0]
            out = self._call(batch, len(live))
        except Exception as exc:
            if len(live) == 1:
                live[0][1].set_exception(exc)
                return
            # One request may be at fault (wrong shape, values the model rejects): run each alone.
            for x, f in live:
                try:
                    f.set_result(self._call(x, 1))
                except Exception as one:
                    f.set_exception(one)
            return
        start = 0
        for x, f in live:
            f.set_result(out[start : start + len(x)])
            start += len(x)
