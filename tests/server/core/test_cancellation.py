"""Work of a call that ended (client cancel, deadline) is dropped from the model's queue."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
from lookalike.server.core.embedding.batcher import MicroBatcher
from lookalike.server.core.embedding.cancellation import call_scope, track

MATCH = "MatchService/Match"


def test_queued_work_of_a_cancelled_call_never_reaches_the_model():
    seen: list[int] = []
    running = threading.Event()
    gate = threading.Event()

    def model(batch: np.ndarray) -> np.ndarray:
        running.set()
        gate.wait(10)
        seen.extend(int(x) for x in batch[:, 0])
        return batch

    batcher = MicroBatcher(model, max_batch=1, max_wait_s=0.0)
    try:
        first = batcher.submit(np.array([[1.0]], np.float32))
        assert running.wait(10)  # the first request occupies the model
        with call_scope() as scope:
            queued = track(batcher.submit(np.array([[2.0]], np.float32)))
        scope.cancel()  # the call's deadline passed while its image waited
        gate.set()
        first.result(10)
        later = batcher.submit(np.array([[3.0]], np.float32)).result(10)
        assert queued.cancelled() and seen == [1, 3] and later[0, 0] == 3.0
    finally:
        gate.set()
        batcher.close()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def test_a_match_whose_deadline_passes_on_the_server_is_cancelled_there(grpc_server, client, photos):
    """The deadline passes while the call's images wait for a model worker (every worker is held):
    the server drops them, ends the call without waiting for the model, and never embeds them."""
    from lookalike.v1 import match_service_pb2 as pb
    from lookalike.v1 import match_service_pb2_grpc as pb_grpc
    from lookalike.v1.types_pb2 import Image
    from photos import encode

    batcher = grpc_server.service.embedder.batcher
    registry = grpc_server.metrics.registry

    def in_flight() -> float:
        return registry.get_sample_value("lookalike_requests_in_flight", {"method": MATCH}) or 0.0

    image = encode(photos["rocket"])
    calls: list[tuple[int, int]] = []  # (images, requests) of every model call from now on
    observe = lambda images, requests: calls.append((images, requests))  # noqa: E731
    gate = threading.Event()
    holding = threading.Barrier(batcher.workers + 1)

    def hold() -> None:
        holding.wait(10)
        gate.wait(60)

    assert in_flight() == 0 and batcher.queue_depth == 0
    held = [batcher.call_in_worker(hold) for _ in range(batcher.workers)]
    batcher.observers.append(observe)
    errors: list[grpc.RpcError] = []
    try:
        holding.wait(10)  # every model worker now runs hold(): no model call can start
        with grpc.insecure_channel(grpc_server.address) as ch:
            stub = pb_grpc.MatchServiceStub(ch)

            def expiring_match() -> None:
                try:
                    stub.Match(pb.MatchRequest(image_a=Image(content=image), image_b=Image(content=image)), timeout=2.0)
                except grpc.RpcError as err:
                    errors.append(err)

            caller = threading.Thread(target=expiring_match)
            caller.start()
            # the request reached the server: decoded, its two images queued for the model (they stay
            # counted there, cancelled or not, until a worker is free)
            wait_for(lambda: batcher.queue_depth == 2, 10.0, "the Match is queued on the server")
            caller.join(10)
            assert not caller.is_alive() and len(errors) == 1
            assert errors[0].code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # the server side of the call ends while the model is still held: its queued work was cancelled,
            # not waited for (without the cancellation the handler would block until the model ran)
            wait_for(lambda: in_flight() == 0, 10.0, "the server ends the expired call")
            assert not gate.is_set() and calls == []
    finally:
        gate.set()
        for f in held:
            f.result(10)
    try:
        assert client.match(image, image).similarity > 0.99  # the server still answers
        wait_for(lambda: batcher.queue_depth == 0, 10.0, "the queue drains")
    finally:
        batcher.observers.remove(observe)
    assert sum(images for images, _ in calls) == 2, calls  # only the second call's two images were embedded
    assert all(requests == 1 for _, requests in calls), calls
