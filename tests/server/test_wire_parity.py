"""The same mistake gets the same status and reason on every wire: gRPC and the PAI JSON API.

Every transport goes through one service method per operation, where validation lives once;
this table sends each bad request both ways against one real server and compares.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
from lookalike.client import ClientError, LookalikeClient
from photos import encode

# The gateway's HTTP status for each gRPC code (server/transport/http_gateway.py HTTP_STATUS).
HTTP_CODE = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION",
             429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 500: "INTERNAL"}  # fmt: skip
DB = "parity"


@pytest.fixture(scope="module")
def server(tmp_path_factory, photos):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    running = create_server(ServerConfig(port=0, http_port=0, snapshot_interval_s=0,
                                         data_dir=tmp_path_factory.mktemp("parity")))  # fmt: skip
    with LookalikeClient(running.address) as c:
        c.create_database(DB)
        c.set_image(DB, "sku", image=encode(photos["chelsea"]), intra_id=0)
        yield running, c
    running.stop(0)


def pai(server, function: str, **params) -> tuple[str, str]:
    running, _ = server
    url = f"http://127.0.0.1:{running.http_port}/api/predict/parity"
    r = requests.post(url, data=json.dumps({"function_name": function, "function_params": params}), timeout=60)
    body = r.json()
    assert body["success"] is False and body["error_msg"], body
    return HTTP_CODE[r.status_code], body["error_code"]


def grpc(call) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.code, info.value.reason


GARBAGE = b"definitely not an image"
SMALL = encode(np.full((40, 60, 3), 128, np.uint8), "PNG")  # a crop of 0.1 of it is 6x4 pixels
LONG_GROUP = "g" * 300

# (case, gRPC call on the client, PAI function and params, the expected (code, reason))
CASES = [
    ("delete image: group id with a newline",
     lambda c: c.delete_image(DB, "a\nb", 0), ("db_delete", {"database_name": DB, "group_id": "a\nb", "intra_id": 0}),
     ("INVALID_ARGUMENT", "GROUP_ID_INVALID")),
    ("delete image: negative intra_id",
     lambda c: c.delete_image(DB, "sku", -1), ("db_delete", {"database_name": DB, "group_id": "sku", "intra_id": -1}),
     ("INVALID_ARGUMENT", "INTRA_ID_INVALID")),
    ("delete image: intra_id past 2**53",
     lambda c: c.delete_image(DB, "sku", 2**53),
     ("db_delete", {"database_name": DB, "group_id": "sku", "intra_id": 2**53}),
     ("INVALID_ARGUMENT", "INTRA_ID_INVALID")),
    ("delete image: no such image",
     lambda c: c.delete_image(DB, "sku", 7), ("db_delete", {"database_name": DB, "group_id": "sku", "intra_id": 7}),
     ("NOT_FOUND", "IMAGE_NOT_FOUND")),
    ("delete group: no such group",
     lambda c: c.delete_group(DB, "nobody"), ("db_delete", {"database_name": DB, "group_id": "nobody"}),
     ("NOT_FOUND", "GROUP_NOT_FOUND")),
    ("delete group: group id too long",
     lambda c: c.delete_group(DB, LONG_GROUP), ("db_delete", {"database_name": DB, "group_id": LONG_GROUP}),
     ("INVALID_ARGUMENT", "GROUP_ID_INVALID")),
    ("get image: negative intra_id",
     lambda c: c.get_image(DB, "sku", -1), ("db_get", {"database_name": DB, "group_id": "sku", "intra_id": -1}),
     ("INVALID_ARGUMENT", "INTRA_ID_INVALID")),
    ("get image: no such image",
     lambda c: c.get_image(DB, "sku", 9), ("db_get", {"database_name": DB, "group_id": "sku", "intra_id": 9}),
     ("NOT_FOUND", "IMAGE_NOT_FOUND")),
    ("get image: no such database",
     lambda c: c.get_image("nodb", "sku", 0), ("db_get", {"database_name": "nodb", "group_id": "sku", "intra_id": 0}),
     ("NOT_FOUND", "DATABASE_NOT_FOUND")),
    ("get database: invalid name",
     lambda c: c.get_database("bad name!"), ("get", {"database_name": "bad name!"}),
     ("INVALID_ARGUMENT", "DATABASE_NAME_INVALID")),
    ("create database: exists", lambda c: c.create_database(DB), ("add", {"database_name": DB}),
     ("ALREADY_EXISTS", "DATABASE_EXISTS")),
    ("create database: invalid name", lambda c: c.create_database("-x"), ("add", {"database_name": "-x"}),
     ("INVALID_ARGUMENT", "DATABASE_NAME_INVALID")),
    ("delete database: missing", lambda c: c.delete_database("nodb"), ("delete", {"database_name": "nodb"}),
     ("NOT_FOUND", "DATABASE_NOT_FOUND")),
    ("set image: undecodable",
     lambda c: c.set_image(DB, "sku", image=GARBAGE),
     ("db_set", {"database_name": DB, "group_id": "sku", "image": base64.b64encode(GARBAGE).decode()}),
     ("INVALID_ARGUMENT", "IMAGE_UNDECODABLE")),
    ("set image: group id too long",
     lambda c: c.set_image(DB, LONG_GROUP, image=GARBAGE),
     ("db_set", {"database_name": DB, "group_id": LONG_GROUP, "image": base64.b64encode(GARBAGE).decode()}),
     ("INVALID_ARGUMENT", "GROUP_ID_INVALID")),
    ("set image: no such database",
     lambda c: c.set_image("nodb", "sku", image=GARBAGE),
     ("db_set", {"database_name": "nodb", "group_id": "sku", "image": base64.b64encode(GARBAGE).decode()}),
     ("NOT_FOUND", "DATABASE_NOT_FOUND")),
    ("search: top_k out of range",
     lambda c: c.search(DB, vector=[1.0] * 1280, top_k=100_000),
     ("db_search", {"database_name": DB, "search_topk": 100_000, "image": base64.b64encode(GARBAGE).decode()}),
     ("INVALID_ARGUMENT", "TOP_K_INVALID")),
    ("search: invalid database name",
     lambda c: c.search("bad name!", vector=[1.0] * 1280),
     ("db_search", {"database_name": "bad name!", "image": base64.b64encode(GARBAGE).decode()}),
     ("INVALID_ARGUMENT", "DATABASE_NAME_INVALID")),
    ("search: crop past the image's edge",
     lambda c: c.search(DB, image=GARBAGE, crop=(0.6, 0.0, 0.5, 0.5)),
     ("db_search", {"database_name": DB, "image": base64.b64encode(GARBAGE).decode(), "crop": [0.6, 0, 0.5, 0.5]}),
     ("INVALID_ARGUMENT", "CROP_INVALID")),
    ("search: crop of a few pixels",
     lambda c: c.search(DB, image=SMALL, crop=(0.5, 0.5, 0.1, 0.1)),
     ("db_search", {"database_name": DB, "image": base64.b64encode(SMALL).decode(), "crop": [0.5, 0.5, 0.1, 0.1]}),
     ("INVALID_ARGUMENT", "CROP_INVALID")),
]  # fmt: skip


@pytest.mark.parametrize("case, grpc_call, pai_call, expected", CASES, ids=[c[0] for c in CASES])
def test_same_mistake_same_answer_on_both_wires(server, case, grpc_call, pai_call, expected):
    _, client = server
    on_grpc = grpc(lambda: grpc_call(client))
    on_pai = pai(server, pai_call[0], **pai_call[1])
    assert on_grpc == expected, f"gRPC: {case}"
    assert on_pai == expected, f"PAI: {case}"


def test_pai_db_get_returns_a_whole_group_past_ten_thousand(server):
    """PAI ``db_get`` of a group reads it a page at a time: a large group is never cut short."""
    running, client = server
    client.create_database("biggroup")
    vectors = [[float(i % 7 == j % 7) + 0.01 * j for j in range(1280)] for i in range(7)]
    client.bulk_set("biggroup", ((("g", i, vectors[i % 7], f"r{i}")) for i in range(10_050)))
    url = f"http://127.0.0.1:{running.http_port}/api/predict/parity"
    body = requests.post(url, data=json.dumps({"function_name": "db_get", "function_params": {
        "database_name": "biggroup", "group_id": "g"}}), timeout=120).json()  # fmt: skip
    assert body["success"] is True
    assert sorted(e["intra_id"] for e in body["entries"]) == list(range(10_050))
