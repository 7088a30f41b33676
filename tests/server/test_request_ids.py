"""Request ids name one request (AIP-155), over the wire, across restarts, in streams.

A retry (same id, same key, same bytes) answers with the first result, marked ``replayed``;
the same id with another group, intra_id or content is ALREADY_EXISTS / REQUEST_ID_REUSED and
stores nothing. What the id asked for is kept in the log and in snapshots, so a restart (log
replay, or a snapshot) still tells a retry from a reuse.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from durability_helpers import start, unit_vectors
from lookalike.client import ClientError, LookalikeClient
from photos import encode, photo

pytestmark = pytest.mark.slow


def reused(call) -> ClientError:
    with pytest.raises(ClientError) as err:
        call()
    assert (err.value.code, err.value.reason) == ("ALREADY_EXISTS", "REQUEST_ID_REUSED"), err.value
    return err.value


def check_window(c: LookalikeClient, v: np.ndarray, image: bytes) -> None:
    again = c.set_image("d", "g", vector=v[0].tolist(), request_id="r1")
    assert (again.key.group_id, again.key.intra_id, again.replayed) == ("g", 0, True)
    assert "content" in reused(lambda: c.set_image("d", "g", vector=v[1].tolist(), request_id="r1")).message
    assert "group_id" in reused(lambda: c.set_image("d", "h", vector=v[0].tolist(), request_id="r1")).message
    assert "intra_id" in reused(lambda: c.set_image("d", "g", intra_id=5, vector=v[0].tolist(),
                                                    request_id="r1")).message  # fmt: skip
    assert c.set_image("d", "p", image=image, request_id="r2").replayed
    reused(lambda: c.set_image("d", "p", image=image + b"\0", request_id="r2"))  # other bytes, same picture
    assert sorted((i.key.group_id, i.key.intra_id) for i in c.list_images("d")) == [("g", 0), ("p", 0)]


def test_a_reused_request_id_is_refused_before_and_after_restarts(tmp_path):
    data = tmp_path / "data"
    v = unit_vectors(2, seed=3)
    image = encode(photo("chelsea"))
    server = start(data)
    with LookalikeClient(server.address) as c:
        c.create_database("d")
        first = c.set_image("d", "g", vector=v[0].tolist(), request_id="r1")
        assert (first.key.intra_id, first.replayed) == (0, False)
        stored = c.set_image("d", "p", image=image, request_id="r2")
        assert not stored.replayed
        assert c.get_image("d", "p", 0).attributes["lookalike.sha256"] == hashlib.sha256(image).hexdigest()
        check_window(c, v, image)
    server.stop(0, snapshot=False)  # only the log holds the writes and what their ids asked for
    server = start(data)
    with LookalikeClient(server.address) as c:
        check_window(c, v, image)
    server.stop(0)  # now a snapshot holds the window
    server = start(data)
    with LookalikeClient(server.address) as c:
        check_window(c, v, image)
    server.stop(0)


def test_a_stream_reports_replays_and_reuses_per_item(grpc_server, client, db_name):
    v = unit_vectors(4, seed=5)
    client.set_image(db_name, "g", vector=v[0].tolist(), request_id="x")
    items = [
        ("g", None, v[0].tolist(), "retry", None, "x"),  # the same write again: replayed
        ("g", None, v[1].tolist(), "new", None, "y"),
        ("g", None, v[2].tolist(), "reuse", None, "x"),  # another vector under a used id
        ("g", None, v[1].tolist(), "repeat", None, "y"),  # repeated inside the stream: written once
    ]
    r = client.bulk_set(db_name, items)
    assert (r.received_count, r.succeeded_count, r.replayed_count, r.failed_count) == (4, 3, 2, 1)
    assert [(f.index, f.client_ref, f.reason) for f in r.failures] == [(2, "reuse", "REQUEST_ID_REUSED")]
    assert [(k.group_id, k.intra_id) for k in r.keys] == [("g", 0), ("g", 1), ("g", 1)]
    assert client.get_database(db_name).image_count == 2


def test_the_servers_attribute_namespace_is_refused_to_clients(grpc_server, client, db_name):
    with pytest.raises(ClientError) as err:
        client.set_image(db_name, "g", vector=unit_vectors(1, 1)[0].tolist(), attributes={"lookalike.sha256": "0" * 64})
    assert (err.value.code, err.value.reason) == ("INVALID_ARGUMENT", "ATTRIBUTES_INVALID")
    assert "set by the server" in err.value.message
    assert client.get_database(db_name).image_count == 0
