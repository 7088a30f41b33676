"""Health and reflection need no token, so their streams must not be able to take the server.

Before: 40 idle ``ServerReflectionInfo`` streams, or 48 idle health ``Watch`` streams, took every
gRPC thread, and every call (Health.Check, ListDatabases) ended in DEADLINE_EXCEEDED. Now they
share ``--max-open-streams`` (beyond it RESOURCE_EXHAUSTED at once) and idle ones are cancelled
after ``--stream-idle-s``.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from lookalike.client import ClientError, LookalikeClient
from photos import encode, photo

TOKEN = "open-streams-t0ken"
IDLE_S = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    running = create_server(ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("open-streams"), token=TOKEN,
                                         stream_idle_s=IDLE_S, snapshot_interval_s=0))  # fmt: skip
    yield running
    running.stop(0)


def test_idle_health_and_reflection_streams_without_a_token_leave_every_call_answering(server):
    release = threading.Event()

    def silent():  # a reflection client that opens its stream and never asks anything
        release.wait(60)
        return
        yield  # pragma: no cover

    image = encode(photo("coffee"))
    with grpc.insecure_channel(server.address) as ch:
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        calls = [reflection.ServerReflectionInfo(silent()) for _ in range(60)]
        calls += [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(60)]
        time.sleep(1.0)
        try:
            with LookalikeClient(server.address, token=TOKEN) as client:
                for _ in range(3):
                    started = time.monotonic()
                    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
                    client.list_databases()
                    assert client.match(image, image).similarity > 0.99
                    assert time.monotonic() - started < 2.0, "a call waited behind the idle streams"
            refused = [c for c in calls if c.done() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert len(refused) >= 120 - 8, "streams over --max-open-streams are refused at once"
            reasons = {ClientError.from_rpc_error(c, "").reason for c in refused}
            assert reasons == {"TOO_MANY_STREAMS"}
            admitted = [c for c in calls if c not in refused]
            deadline = time.monotonic() + IDLE_S + 10
            while time.monotonic() < deadline and not all(c.done() for c in admitted):
                time.sleep(0.2)
            assert all(c.code() == grpc.StatusCode.CANCELLED for c in admitted), "idle ones are cancelled"
            # and the share is free again: a reflection client that asks gets its answer
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            answer = next(reflection.ServerReflectionInfo(iter([request]), timeout=5))
            assert any(s.name == "lookalike.v1.MatchService" for s in answer.list_services_response.service)
        finally:
            release.set()
            for c in calls:
                c.cancel()
