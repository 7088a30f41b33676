"""Work of a call that ended (client cancel, deadline) is dropped from the model's queue."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from lookalike.server.core.batcher import MicroBatcher
from lookalike.server.core.cancellation import call_scope, track


def test_queued_work_of_a_cancelled_call_never_reaches_the_model():
    seen: list[int] = []
    gate = threading.Event()

    def model(batch: np.ndarray) -> np.ndarray:
        gate.wait(10)
        seen.extend(int(x) for x in batch[:, 0])
        return batch

    batcher = MicroBatcher(model, max_batch=1, max_wait_s=0.0)
    try:
        first = batcher.submit(np.array([[1.0]], np.float32))  # occupies the model
        time.sleep(0.1)
        with call_scope() as scope:
            queued = track(batcher.submit(np.array([[2.0]], np.float32)))
        scope.cancel()  # the call's deadline passed while its image waited
        gate.set()
        first.result(10)
        later = batcher.submit(np.array([[3.0]], np.float32)).result(10)
        assert queued.cancelled() and seen == [1, 3] and later[0, 0] == 3.0
    finally:
        batcher.close()


def test_an_expired_match_does_not_break_the_server(client, photos):
    from photos import encode

    image = encode(photos["rocket"])
    with grpc.insecure_channel(client.address) as ch:
        from lookalike.v1 import match_service_pb2 as pb
        from lookalike.v1 import match_service_pb2_grpc as pb_grpc
        from lookalike.v1.types_pb2 import Image

        stub = pb_grpc.MatchServiceStub(ch)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                stub.Match(pb.MatchRequest(image_a=Image(content=image), image_b=Image(content=image)), timeout=0.001)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.match(image, image).similarity > 0.99
