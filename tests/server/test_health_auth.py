"""Health checking, reflection and the optional token."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lookalike.client import ClientError, LookalikeClient
from photos import encode


def test_health_reports_serving(grpc_server):
    with grpc.insecure_channel(grpc_server.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "lookalike.v1.SearchService"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(grpc_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(grpc_server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        resp = next(stub.ServerReflectionInfo(iter([req]), timeout=10))
        names = {s.name for s in resp.list_services_response.service}
    assert {"lookalike.v1.MatchService", "lookalike.v1.DatabaseService", "lookalike.v1.SearchService"} <= names


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    running = create_server(ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("d"), token="s3cret-t0ken"))
    yield running
    running.stop(0)


def test_token_is_required_and_never_echoed(token_server, photos):
    img = encode(photos["coffee"])
    with LookalikeClient(token_server.address) as anonymous:
        with pytest.raises(ClientError) as info:
            anonymous.match(img, img)
        assert (info.value.code, info.value.reason) == ("UNAUTHENTICATED", "TOKEN_INVALID")
    with LookalikeClient(token_server.address, token="wrong") as wrong:
        with pytest.raises(ClientError) as info:
            wrong.bulk_set("x", [("g", None, img, "r")])
        assert info.value.reason == "TOKEN_INVALID"
        assert "s3cret" not in str(info.value)
    with LookalikeClient(token_server.address, token="s3cret-t0ken") as ok:
        assert ok.match(img, img).cosine == pytest.approx(1.0, abs=1e-5)
    with grpc.insecure_channel(token_server.address) as ch:  # probes need no token
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
