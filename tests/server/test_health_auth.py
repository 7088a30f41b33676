"""Health checking, reflection and the optional token."""

from __future__ import annotations

import logging

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

    running = create_server(ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("d"), token=SECRET))
    yield running
    running.stop(0)


SECRET = "s3cret-t0ken"
WRONG = "wr0ng-t0ken-7f3a9c"  # what a client sends by mistake (perhaps another server's secret)


def _everything_said(err: grpc.RpcError) -> str:
    """All a failed call tells its caller: status, details, both metadata sets, the debug string."""
    parts = [str(err.code()), err.details() or "", err.debug_error_string() or ""]
    for md in (err.initial_metadata() or (), err.trailing_metadata() or ()):
        parts += [f"{k}={v!r}" for k, v in md]  # grpc-status-details-bin (the ErrorInfo) included, as bytes
    return "\n".join(parts)


def test_token_is_required_and_never_echoed(token_server, photos, caplog, capfd):
    from lookalike.v1 import database_service_pb2 as db_pb
    from lookalike.v1 import database_service_pb2_grpc as db_grpc
    from lookalike.v1 import match_service_pb2 as pb
    from lookalike.v1 import match_service_pb2_grpc as pb_grpc
    from lookalike.v1.types_pb2 import Image

    caplog.set_level(logging.DEBUG)  # every server log line, the per-request ones included
    img = encode(photos["coffee"])
    with LookalikeClient(token_server.address) as anonymous:
        with pytest.raises(ClientError) as info:
            anonymous.match(img, img)
        assert (info.value.code, info.value.reason) == ("UNAUTHENTICATED", "TOKEN_INVALID")
    said = []
    with LookalikeClient(token_server.address, token=WRONG) as wrong:
        for call in (lambda: wrong.match(img, img), lambda: wrong.bulk_set("x", [("g", None, img, "r")])):
            with pytest.raises(ClientError) as info:
                call()
            assert (info.value.code, info.value.reason) == ("UNAUTHENTICATED", "TOKEN_INVALID")
            said += [str(info.value), info.value.message, repr(info.value.metadata)]
    with grpc.insecure_channel(token_server.address) as ch:  # the raw answers, metadata and all
        auth = (("authorization", WRONG),)
        calls = [
            lambda: pb_grpc.MatchServiceStub(ch).Match(
                pb.MatchRequest(image_a=Image(content=img), image_b=Image(content=img)), metadata=auth, timeout=10
            ),
            lambda: db_grpc.DatabaseServiceStub(ch).BulkSetImages(
                iter([db_pb.BulkSetImagesRequest(database="x", group_id="g", image=Image(content=img))]),
                metadata=auth,
                timeout=10,
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as raw:
                call()
            assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED
            said.append(_everything_said(raw.value))
    out, err = capfd.readouterr()
    logged = [r.getMessage() for r in caplog.records] + [repr(r.__dict__) for r in caplog.records]
    assert any("Match" in line for line in logged), "the server's log lines were captured"
    for text in said + logged + [out, err]:
        assert WRONG not in text and "wr0ng" not in text, text
        assert SECRET not in text and "s3cret" not in text, text
    with LookalikeClient(token_server.address, token=SECRET) as ok:
        assert ok.match(img, img).cosine == pytest.approx(1.0, abs=1e-5)
    with grpc.insecure_channel(token_server.address) as ch:  # probes need no token
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
