"""The micro-batcher batches, isolates a bad request, and shuts down without leaving callers waiting.

No test sleeps to let the worker get somewhere: the model says when a call is inside it and
holds it at a gate until released, so what is running and what is queued is known.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from lookalike.server.core.embedding.batcher import BatcherClosed, MicroBatcher


class CountingModel:
    """Doubles its input; counts calls and batch sizes; refuses rows holding NaN like a strict model.

    Each call is counted as it enters, then waits at ``gate`` (open unless a test closes it);
    ``wait_inside(n)`` returns once ``n`` calls are inside at the same time.
    """

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self._inside = 0
        self._changed = threading.Condition()

    def wait_inside(self, n: int, timeout: float = 10.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self._inside == n, timeout), f"{self._inside} calls inside, not {n}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._changed:
            self.calls.append(len(batch))
            self._inside += 1
            self._changed.notify_all()
        try:
            self.gate.wait(10)
            if np.isnan(batch).any():
                raise ValueError("non-finite input")
            return batch * 2
        finally:
            with self._changed:
                self._inside -= 1
                self._changed.notify_all()


def test_concurrent_requests_share_model_calls():
    model = CountingModel()
    model.gate.clear()  # the first model call is held until every request is queued
    batcher = MicroBatcher(model, max_batch=16, max_wait_s=0.05)
    seen: list[tuple[int, int]] = []
    batcher.observers.append(lambda images, requests: seen.append((images, requests)))
    submitted = threading.Barrier(32 + 1)

    def call(row: np.ndarray) -> np.ndarray:
        future = batcher.submit(row)
        submitted.wait(10)
        return future.result(timeout=10)

    try:
        rows = [np.full((1, 3), i, np.float32) for i in range(32)]
        with ThreadPoolExecutor(32) as pool:
            results = pool.map(call, rows)
            submitted.wait(10)  # all 32 submitted
            model.wait_inside(1)
            first = model.calls[0]
            assert batcher.queue_depth == 32 - first  # the rest wait for the model
            model.gate.set()
            outs = list(results)
    finally:
        model.gate.set()
        batcher.close()
    for i, out in enumerate(outs):  # each caller gets its own rows back, in place
        np.testing.assert_array_equal(out, np.full((1, 3), 2 * i, np.float32))
    rest = 32 - first
    assert model.calls == [first] + [16] * (rest // 16) + ([rest % 16] if rest % 16 else [])  # the queued share calls
    assert [s[0] for s in seen] == model.calls and sum(s[1] for s in seen) == 32


def test_batch_of_one_when_max_batch_is_one():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=1, max_wait_s=0.05)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: batcher.submit(np.ones((1, 2), np.float32)).result(timeout=10), range(8)))
    finally:
        batcher.close()
    assert model.calls == [1] * 8


def test_one_bad_request_fails_only_itself():
    model = CountingModel()
    model.gate.clear()  # hold the worker so every request lands in one batch
    batcher = MicroBatcher(model, max_batch=64, max_wait_s=0.2)
    try:
        first = batcher.submit(np.zeros((1, 3), np.float32))
        model.wait_inside(1)  # the worker holds `first` at the gate; what follows queues behind it
        good = [batcher.submit(np.full((2, 3), i, np.float32)) for i in range(5)]
        bad = batcher.submit(np.array([[1.0, np.nan, 0.0]], np.float32))
        wrong_shape = batcher.submit(np.zeros((1, 4), np.float32))  # cannot even be concatenated
        assert batcher.queue_depth == 5 * 2 + 1 + 1
        model.gate.set()
        first.result(timeout=10)
        for i, f in enumerate(good):
            np.testing.assert_array_equal(f.result(timeout=10), np.full((2, 3), 2 * i, np.float32))
        with pytest.raises(ValueError, match="non-finite"):
            bad.result(timeout=10)
        assert wrong_shape.result(timeout=10).shape == (1, 4)  # alone it is fine: it fails nobody else
    finally:
        batcher.close()


def test_close_fails_pending_requests_and_does_not_hang():
    model = CountingModel()
    model.gate.clear()
    batcher = MicroBatcher(model, max_batch=1, max_wait_s=0.0)
    running = batcher.submit(np.ones((1, 2), np.float32))
    model.wait_inside(1)  # the worker holds `running` at the gate
    queued = [batcher.submit(np.ones((1, 2), np.float32)) for _ in range(5)]
    assert batcher.queue_depth == 5
    closer = threading.Thread(target=batcher.close)
    started = time.monotonic()
    closer.start()
    for f in queued:  # failed at once, while the running batch is still held
        with pytest.raises(BatcherClosed) as info:
            f.result(timeout=5)
        assert info.value.reason == "SHUTTING_DOWN"
    model.gate.set()
    closer.join(timeout=10)
    assert not closer.is_alive() and time.monotonic() - started < 5
    np.testing.assert_array_equal(running.result(timeout=1), np.full((1, 2), 2, np.float32))  # finished, not lost
    with pytest.raises(BatcherClosed):
        batcher.submit(np.ones((1, 2), np.float32)).result(timeout=1)
    assert batcher.queue_depth == 0


def test_close_with_a_stuck_model_returns_and_fails_the_queue():
    model = CountingModel()
    model.gate.clear()  # never released before close: the model is stuck
    batcher = MicroBatcher(model, max_batch=1, max_wait_s=0.0)
    batcher.submit(np.ones((1, 2), np.float32))
    model.wait_inside(1)
    queued = batcher.submit(np.ones((1, 2), np.float32))
    started = time.monotonic()
    batcher.close(timeout=0.5)
    assert time.monotonic() - started < 3
    with pytest.raises(BatcherClosed):
        queued.result(timeout=1)
    model.gate.set()


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(CountingModel(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(CountingModel(), max_wait_s=-1)


def test_call_in_worker_runs_on_the_model_thread_between_batches():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=4, name="model-thread")
    try:
        assert batcher.call_in_worker(lambda: threading.current_thread().name).result(timeout=5) == "model-thread"
        np.testing.assert_array_equal(batcher.submit(np.ones((1, 2), np.float32)).result(timeout=5), 2)
    finally:
        batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.call_in_worker(lambda: None).result(timeout=1)


def test_a_request_larger_than_max_batch_runs_in_slices():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=4, max_wait_s=0.0)
    seen: list[tuple[int, int]] = []
    batcher.observers.append(lambda images, requests: seen.append((images, requests)))
    try:
        rows = np.arange(30, dtype=np.float32).reshape(10, 3)
        np.testing.assert_array_equal(batcher.submit(rows).result(timeout=5), rows * 2)
    finally:
        batcher.close()
    assert model.calls == [4, 4, 2] and [s[0] for s in seen] == [4, 4, 2]


# -- several workers --------------------------------------------------------------------------
class BarrierModel(CountingModel):
    """Each call waits until ``parties`` calls are inside the model at once (or fails after a timeout)."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=5)
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.barrier.wait()  # BrokenBarrierError if the calls do not overlap
        return super().__call__(batch)


def test_workers_run_model_calls_side_by_side():
    model = BarrierModel(2)
    batcher = MicroBatcher(model, max_batch=1, max_wait_s=0.0, workers=2, name="w")
    try:
        futs = [batcher.submit(np.full((1, 2), i, np.float32)) for i in range(2)]
        outs = [f.result(timeout=10) for f in futs]
    finally:
        batcher.close()
    assert [o[0, 0] for o in outs] == [0, 2]
    assert model.threads == {"w-0", "w-1"}


def test_one_worker_never_overlaps_model_calls():
    model = BarrierModel(2)
    model.barrier = threading.Barrier(2, timeout=0.3)
    batcher = MicroBatcher(model, max_batch=1, max_wait_s=0.0, workers=1)
    try:
        futs = [batcher.submit(np.full((1, 2), i, np.float32)) for i in range(2)]
        with pytest.raises(threading.BrokenBarrierError):
            futs[0].result(timeout=10)
    finally:
        batcher.close()


def test_a_large_request_is_shared_by_the_workers_and_equals_the_sequential_result():
    model = CountingModel()
    rows = np.random.default_rng(0).standard_normal((37, 5)).astype(np.float32)
    sequential = MicroBatcher(CountingModel(), max_batch=3, max_wait_s=0.0, workers=1)
    batcher = MicroBatcher(model, max_batch=3, max_wait_s=0.0, workers=3)
    try:
        with ThreadPoolExecutor(4) as pool:  # concurrent callers, each a request larger than max_batch
            outs = list(pool.map(lambda i: batcher.submit(rows[i:]).result(timeout=10), range(4)))
        expected = [sequential.submit(rows[i:]).result(timeout=10) for i in range(4)]
    finally:
        batcher.close()
        sequential.close()
    for out, exp in zip(outs, expected, strict=True):
        np.testing.assert_array_equal(out, exp)
        np.testing.assert_array_equal(out[: len(out)], rows[37 - len(out) :] * 2)
    assert max(model.calls) <= 3 and sum(model.calls) == sum(37 - i for i in range(4))


def test_a_bad_slice_fails_its_request_only():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=2, max_wait_s=0.0, workers=2)
    try:
        bad = np.ones((7, 2), np.float32)
        bad[5, 1] = np.nan
        good = np.ones((7, 2), np.float32)
        fb, fg = batcher.submit(bad), batcher.submit(good)
        with pytest.raises(ValueError, match="non-finite"):
            fb.result(timeout=10)
        np.testing.assert_array_equal(fg.result(timeout=10), good * 2)
    finally:
        batcher.close()


def test_worker_init_runs_on_every_worker():
    seen: list[str] = []
    lock = threading.Lock()

    def init() -> None:
        with lock:
            seen.append(threading.current_thread().name)

    batcher = MicroBatcher(CountingModel(), workers=3, worker_init=init, name="m")
    try:
        batcher.submit(np.ones((1, 1), np.float32)).result(timeout=10)
    finally:
        batcher.close()
    assert sorted(seen) == ["m-0", "m-1", "m-2"]


def test_close_with_several_workers_stops_them_all_and_fails_what_waits():
    model = CountingModel()
    model.gate.clear()  # the running calls block until released
    batcher = MicroBatcher(model, max_batch=1, max_wait_s=0.0, workers=2)
    futs = [batcher.submit(np.ones((1, 1), np.float32)) for _ in range(6)]
    model.wait_inside(2)  # two calls running (the first two), four queued
    assert batcher.queue_depth == 4
    closer = threading.Thread(target=batcher.close)
    closer.start()
    for f in futs[2:]:  # failed by close() while the running calls are still held
        assert isinstance(f.exception(timeout=5), BatcherClosed)
    assert not futs[0].done() and not futs[1].done()
    model.gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert not any(t.is_alive() for t in batcher._threads)
    for f in futs[:2]:  # the running calls finished, not lost
        np.testing.assert_array_equal(f.result(timeout=5), np.full((1, 1), 2, np.float32))
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(CountingModel(), workers=0)
