"""Bulk streams and retries on both backends: what is applied when a stream breaks, summaries
that always fit, a database replaced mid-stream, idempotent retries."""

from __future__ import annotations

import logging
import threading
import time

import grpc
import numpy as np
import pytest
from conftest import unit_vectors
from lookalike.client import ClientError
from lookalike.v1 import database_service_pb2 as pb
from lookalike.v1 import database_service_pb2_grpc as pb_grpc
from photos import encode, photo

CHUNK = 32


def item(db: str, group: str, vec: np.ndarray | None = None, **kw) -> pb.BulkSetImagesRequest:
    req = pb.BulkSetImagesRequest(database=db, group_id=group, **kw)
    if vec is not None:
        req.vector.values.extend(vec.tolist())
    return req


def wait_count(client, db: str, at_least: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = client.get_database(db).image_count
        if count >= at_least:
            return count
        time.sleep(0.02)
    raise AssertionError(f"{db} never reached {at_least} images")


def test_a_cancelled_stream_keeps_the_committed_chunks_and_nothing_else(grpc_server, client, db_name, caplog):
    caplog.set_level(logging.INFO)
    vecs = unit_vectors(50, 11)
    release = threading.Event()

    def requests():
        for i in range(50):
            yield item(db_name, "g", vecs[i])
        release.wait(30)  # hold the stream open, as a client that died mid-upload

    with grpc.insecure_channel(grpc_server.address) as ch:
        future = pb_grpc.DatabaseServiceStub(ch).BulkSetImages.future(requests())
        assert wait_count(client, db_name, CHUNK) == CHUNK  # the first chunk is committed...
        time.sleep(0.3)
        assert client.get_database(db_name).image_count == CHUNK  # ...the partial second is not
        future.cancel()
    release.set()  # only after the channel is closed: ending the generator earlier could race the cancel as a clean end
    time.sleep(0.5)
    assert client.get_database(db_name).image_count == CHUNK
    stored = [img.key.intra_id for img in client.list_images(db_name)]
    assert stored == list(range(CHUNK))  # the first 32 items, in stream order
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_database_replaced_during_a_stream_fails_the_stream(grpc_server, client, db_name):
    vecs = unit_vectors(80, 12)

    def requests():
        for i in range(40):
            yield item(db_name if i == 0 else "", "g", vecs[i])
        wait_count(client, db_name, CHUNK)
        client.delete_database(db_name)
        client.create_database(db_name)
        for i in range(40, 80):
            yield item("", "g", vecs[i])

    with grpc.insecure_channel(grpc_server.address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.DatabaseServiceStub(ch).BulkSetImages(requests(), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "deleted" in err.value.details()
    assert client.get_database(db_name).image_count == 0  # nothing leaked into the new database


def test_summaries_always_fit_a_message(grpc_server, client, db_name):
    long_ref = "r" * 100_000  # 700 of these echoed back used to exceed the 64 MiB message limit
    summary = client.bulk_set(db_name, [("g", None, [], long_ref) for _ in range(700)])
    assert summary.failed_count == 700 and len(summary.failures) == 700
    assert {len(f.client_ref) for f in summary.failures} == {256}
    assert {f.reason for f in summary.failures} == {"DIMENSION_MISMATCH"}

    many = [("g", None, [], "x" * 300) for _ in range(14_000)] + [("g", None, unit_vectors(1, 1)[0], "ok")]
    summary = client.bulk_set(db_name, many)
    assert summary.failed_count == 14_000 and summary.failures_truncated
    assert len(summary.failures) < 14_000 and summary.ByteSize() < 4.5 * 2**20
    assert summary.succeeded_count == 1 and not summary.keys_truncated
    assert client.get_database(db_name).image_count == 1


def test_a_retry_with_the_same_request_id_stores_one_copy(grpc_server, client, db_name):
    image = encode(photo("astronaut"))
    with grpc.insecure_channel(grpc_server.address) as ch:
        stub = pb_grpc.DatabaseServiceStub(ch)
        req = pb.SetImageRequest(database=db_name, group_id="g", request_id="upload-7")
        req.image.content = image
        with pytest.raises(grpc.RpcError) as err:
            stub.SetImage(req, timeout=0.002)  # the answer is lost; the write may or may not have landed
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)
    first = client.set_image(db_name, "g", image=image, request_id="upload-7")
    second = client.set_image(db_name, "g", image=image, request_id="upload-7")
    # One copy. Its id is 0 unless the lost call took an automatic id before it was cancelled (Milvus
    # leases ids before the write: an id may be skipped, never given twice).
    assert first.key == second.key and first.key.intra_id in (0, 1)
    assert [i.key.intra_id for i in client.list_images(db_name, group_id="g")] == [first.key.intra_id]
    other = client.set_image(db_name, "g", image=image, request_id="upload-8")
    assert other.key.intra_id > first.key.intra_id  # a new id is a new image
    assert len(client.list_images(db_name, group_id="g")) == 2
    with pytest.raises(ClientError) as bad:
        client.set_image(db_name, "g", image=image, request_id="x" * 200)
    assert bad.value.reason == "REQUEST_ID_INVALID"
