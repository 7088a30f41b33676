"""The micro-batcher batches, isolates a bad request, and shuts down without leaving callers waiting."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from lookalike.server.core.batcher import BatcherClosed, MicroBatcher


class CountingModel:
    """Doubles its input; counts calls and batch sizes; refuses rows holding NaN like a strict model."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        self.calls.append(len(batch))
        if np.isnan(batch).any():
            raise ValueError("non-finite input")
        time.sleep(self.delay_s)
        return batch * 2


def test_concurrent_requests_share_model_calls():
    model = CountingModel(delay_s=0.01)
    batcher = MicroBatcher(model, max_batch=16, max_wait_s=0.05)
    seen: list[tuple[int, int]] = []
    batcher.observers.append(lambda images, requests: seen.append((images, requests)))
    try:
        rows = [np.full((1, 3), i, np.float32) for i in range(32)]
        with ThreadPoolExecutor(32) as pool:
            outs = list(pool.map(lambda r: batcher.submit(r).result(timeout=10), rows))
    finally:
        batcher.close()
    for i, out in enumerate(outs):  # each caller gets its own rows back, in place
        np.testing.assert_array_equal(out, np.full((1, 3), 2 * i, np.float32))
    assert sum(model.calls) == 32
    assert len(model.calls) <= 8, f"32 concurrent requests took {len(model.calls)} model calls"
    assert max(model.calls) <= 16  # max_batch holds
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
        first = batcher.submit(np.zeros((1, 3), np.float32))  # taken at once; the worker then waits on the gate
        time.sleep(0.05)
        good = [batcher.submit(np.full((2, 3), i, np.float32)) for i in range(5)]
        bad = batcher.submit(np.array([[1.0, np.nan, 0.0]], np.float32))
        wrong_shape = batcher.submit(np.zeros((1, 4), np.float32))  # cannot even be concatenated
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
    time.sleep(0.05)  # the worker holds `running` at the gate
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
    time.sleep(0.05)
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
