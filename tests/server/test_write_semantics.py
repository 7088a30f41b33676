"""Bulk streams and retries against a real server: the bulk summary's counts, keys (in stream
order) and failures (index, client_ref, reason); a retry with the same request_id (SetImage or
a bulk item) returns the first call's result and stores nothing again; health says NOT_SERVING
until recovery has finished. Broken and cancelled streams, a database replaced mid-stream and
summaries kept under 4 MiB are in backends/test_bulk_semantics.py (on both backends)."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from durability_helpers import unit_vectors
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lookalike.client import ClientError
from photos import encode

CHUNK = 32


def keys_of(messages) -> list[tuple[str, int]]:
    return [(k.group_id, k.intra_id) for k in messages]


def stored_vector(client, db: str, group: str, intra: int) -> np.ndarray:
    return np.asarray(client.get_image(db, group, intra, include_vector=True).vector.values, np.float32)


def test_a_bulk_summary_counts_every_item_lists_keys_in_order_and_failures_by_index(client, db_name, photos):
    v = unit_vectors(4 + 40, 21)
    items = [
        ("a", None, v[0].tolist(), "r0"),  # 0 -> (a, 0)
        ("a", None, v[1].tolist(), "r1"),  # 1 -> (a, 1)
        ("a", None, [1.0, 2.0], "short"),  # 2 refused: two dimensions
        ("b", 7, v[2].tolist(), "r3"),  # 3 -> (b, 7)
        ("b", None, b"not an image", "junk"),  # 4 refused: undecodable
        ("b", None, encode(photos["coffee"]), "photo"),  # 5 -> (b, 8): one more than the largest
        ("", None, v[3].tolist(), "nogroup"),  # 6 refused: no group
        ("a", None, [0.0] * len(v[0]), "zeros"),  # 7 refused: no direction
    ] + [("c", None, v[4 + i].tolist(), f"c{i}") for i in range(40)]  # 8..47: into a second chunk
    summary = client.bulk_set(db_name, items)

    assert (summary.received_count, summary.succeeded_count, summary.failed_count) == (48, 44, 4)
    assert keys_of(summary.keys) == [("a", 0), ("a", 1), ("b", 7), ("b", 8)] + [("c", i) for i in range(40)]
    assert [(f.index, f.client_ref, f.reason) for f in summary.failures] == [
        (2, "short", "DIMENSION_MISMATCH"),
        (4, "junk", "IMAGE_UNDECODABLE"),
        (6, "nogroup", "GROUP_ID_INVALID"),
        (7, "zeros", "VECTOR_INVALID"),
    ]
    assert all(f.message for f in summary.failures)
    assert not summary.failures_truncated and not summary.keys_truncated

    # the summary says what was stored: exactly the listed keys, each with its own item's content
    assert client.get_database(db_name).image_count == 44
    assert sorted(keys_of(i.key for i in client.list_images(db_name))) == sorted(keys_of(summary.keys))
    for (group, intra), vec in [(("a", 0), v[0]), (("a", 1), v[1]), (("b", 7), v[2]), (("c", 39), v[43])]:
        np.testing.assert_allclose(stored_vector(client, db_name, group, intra), vec, rtol=1e-5, atol=1e-6)


def test_a_retried_request_id_returns_the_first_result_and_stores_nothing_again(client, db_name):
    v = unit_vectors(5, 22)
    first = client.set_image(db_name, "g", vector=v[0].tolist(), request_id="req-1")
    assert (first.key.group_id, first.key.intra_id, first.replaced) == ("g", 0, False)
    again = client.set_image(db_name, "g", vector=v[0].tolist(), request_id="req-1")  # a retry
    assert (again.key, again.replaced, again.replayed) == (first.key, first.replaced, True)
    with pytest.raises(ClientError) as err:  # the same id for other content is not a retry
        client.set_image(db_name, "g", vector=v[1].tolist(), request_id="req-1")
    assert err.value.reason == "REQUEST_ID_REUSED"
    assert client.get_database(db_name).image_count == 1
    np.testing.assert_allclose(stored_vector(client, db_name, "g", 0), v[0], rtol=1e-5, atol=1e-6)

    upsert = client.set_image(db_name, "g", intra_id=0, vector=v[2].tolist(), request_id="req-2")
    assert (upsert.key.intra_id, upsert.replaced) == (0, True)
    client.set_image(db_name, "g", intra_id=0, vector=v[3].tolist())  # a later write, no request_id
    retry = client.set_image(db_name, "g", intra_id=0, vector=v[2].tolist(), request_id="req-2")
    assert (retry.key, retry.replaced, retry.replayed) == (upsert.key, True, True)  # the first answer
    np.testing.assert_allclose(stored_vector(client, db_name, "g", 0), v[3], rtol=1e-5, atol=1e-6)  # not re-applied

    other = client.set_image(db_name, "g", vector=v[4].tolist(), request_id="req-3")  # a new id is a new write
    assert (other.key.intra_id, other.replaced) == (1, False)
    assert client.get_database(db_name).image_count == 2


def test_a_retried_bulk_stream_returns_the_same_keys_and_stores_each_item_once(client, db_name):
    v = unit_vectors(CHUNK + 8, 23)
    items = [("g", None, v[i].tolist(), f"r{i}", None, f"bulk-{i}") for i in range(CHUNK + 5)]
    first = client.bulk_set(db_name, items)
    assert first.succeeded_count == CHUNK + 5 and keys_of(first.keys) == [("g", i) for i in range(CHUNK + 5)]

    # the answer was lost; the client resends the stream, with three new items at the end
    more = [("g", None, v[i].tolist(), f"r{i}", None, f"bulk-{i}") for i in range(CHUNK + 5, CHUNK + 8)]
    retry = client.bulk_set(db_name, items + more)
    assert (retry.received_count, retry.succeeded_count, retry.failed_count) == (CHUNK + 8, CHUNK + 8, 0)
    assert retry.replayed_count == CHUNK + 5  # the resent items stored nothing again
    assert keys_of(retry.keys) == [("g", i) for i in range(CHUNK + 8)]  # the first keys, then new ones
    assert client.get_database(db_name).image_count == CHUNK + 8
    for i in (0, CHUNK + 4, CHUNK + 7):
        np.testing.assert_allclose(stored_vector(client, db_name, "g", i), v[i], rtol=1e-5, atol=1e-6)


def test_health_is_not_serving_until_recovery_has_finished(tmp_path, monkeypatch):
    from lookalike.client import LookalikeClient
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig
    from lookalike.server.core.backends.builtin.catalog import Catalog

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
