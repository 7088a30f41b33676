"""Micro-batching: concurrent requests share one model call.

Each caller submits a stack of preprocessed images and blocks on a future; one worker
thread drains the queue into batches of at most ``max_batch`` images, waiting at most
``max_wait_s`` for more to arrive once it has one. On a GPU this turns N small calls into
one; on a CPU it still saves the per-call overhead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

_STOP = object()


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        name: str = "embedder-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, items: np.ndarray) -> Future[np.ndarray]:
        """Queue ``items`` ([n, ...]); the future resolves to the model's [n, D] output."""
        fut: Future[np.ndarray] = Future()
        if self._closed:
            fut.set_exception(RuntimeError("the embedder is shutting down"))
            return fut
        self._queue.put((items, fut))
        return fut

    def close(self) -> None:
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        pending: list[tuple[np.ndarray, Future[np.ndarray]]] = []
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            pending = [first]  # type: ignore[list-item]
            count = len(pending[0][0])
            stop = False
            while count < self._max_batch:
                try:
                    nxt = self._queue.get(timeout=self._max_wait_s)
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                pending.append(nxt)  # type: ignore[arg-type]
                count += len(nxt[0])  # type: ignore[index]
            self._run(pending)
            if stop:
                return

    def _run(self, pending: list[tuple[np.ndarray, Future[np.ndarray]]]) -> None:
        live = [(x, f) for x, f in pending if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            batch = np.concatenate([x for x, _ in live]) if len(live) > 1 else live[0][0]
            out = self._run_batch(batch)
        except Exception as exc:  # delivered to every caller of this batch
            for _, f in live:
                f.set_exception(exc)
            return
        start = 0
        for x, f in live:
            f.set_result(out[start : start + len(x)])
            start += len(x)
