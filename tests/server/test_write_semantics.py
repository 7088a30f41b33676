"""Bulk streams and retries: what is applied when a stream breaks, summaries that always fit,
idempotent retries, and health that says NOT_SERVING until recovery has finished."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lookalike.client import ClientError

CHUNK = 32


def test_health_is_not_serving_until_recovery_has_finished(tmp_path, monkeypatch):
    from lookalike.client import LookalikeClient
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig
    from lookalike.server.core.catalog import Catalog

    gate = threading.Event()
    real_recover = Catalog.recover

    def slow_recover(self):
        gate.wait(60)
        real_recover(self)

    monkeypatch.setattr(Catalog, "recover", slow_recover)
    server = create_server(ServerConfig(port=0, data_dir=tmp_path, snapshot_interval_s=0), wait=False)
    try:
        with grpc.insecure_channel(server.address) as ch:
            check = health_pb2_grpc.HealthStub(ch).Check
            status = health_pb2.HealthCheckResponse
            assert check(health_pb2.HealthCheckRequest(), timeout=10).status == status.NOT_SERVING
            with LookalikeClient(server.address) as c:
                with pytest.raises(ClientError) as err:
                    c.list_databases()
                assert err.value.code == "UNAVAILABLE" and err.value.reason == "RECOVERING"
                gate.set()
                server.wait_ready(30)
                assert check(health_pb2.HealthCheckRequest(), timeout=10).status == status.SERVING
                assert c.list_databases() == []
    finally:
        gate.set()
        server.stop(0)
