"""Bad input gets the right status code and a stable reason, and the server keeps serving."""

from __future__ import annotations

import math

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from lookalike.client import ClientError
from photos import encode


def err(fn, *args, **kwargs) -> ClientError:
    with pytest.raises(ClientError) as info:
        fn(*args, **kwargs)
    assert info.value.message  # always says what was wrong
    return info.value


@pytest.fixture(scope="module")
def good(photos) -> bytes:
    return encode(photos["chelsea"])


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"definitely not an image", "IMAGE_UNDECODABLE"),
        (b"", "IMAGE_MISSING"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "IMAGE_UNDECODABLE"),
    ],
    ids=["garbage", "empty", "png-header-only"],
)
def test_bad_images_are_invalid_argument(client, good, data, reason):
    e = err(client.match, good, data)
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", reason)
    assert e.metadata.get("field") == "image_b"
    assert "object at 0x" not in e.message and "Error" not in e.message  # no Python internals


def test_truncated_jpeg(client, good):
    e = err(client.match, good[: len(good) // 2], good)
    assert (e.code, e.reason, e.metadata["field"]) == ("INVALID_ARGUMENT", "IMAGE_UNDECODABLE", "image_a")


def test_decompression_bomb_is_refused(client, good):
    from PIL import Image

    huge = encode(Image.new("L", (12000, 12000)), "PNG")  # 144 MP > the 64 MP default limit
    e = err(client.match, good, huge)
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", "IMAGE_TOO_LARGE")


@pytest.mark.parametrize("name", ["../x", "", "a" * 300, "has space", "-lead", "x/y"])
def test_invalid_database_names(client, name):
    e = err(client.create_database, name)
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", "DATABASE_NAME_INVALID")


def test_unknown_and_duplicate_database(client, db_name, good):
    e = err(client.get_database, "no-such-db")
    assert (e.code, e.reason) == ("NOT_FOUND", "DATABASE_NOT_FOUND")
    e = err(client.search, "no-such-db", image=good)
    assert (e.code, e.reason) == ("NOT_FOUND", "DATABASE_NOT_FOUND")
    e = err(client.create_database, db_name)
    assert (e.code, e.reason) == ("ALREADY_EXISTS", "DATABASE_EXISTS")


def test_vectors_with_wrong_dimension_or_nan(client, db_name):
    e = err(client.set_image, db_name, "g", vector=[0.1] * 7)
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", "DIMENSION_MISMATCH")
    assert e.metadata == {"expected": "1280", "actual": "7"}
    e = err(client.set_image, db_name, "g", vector=[math.nan] + [0.1] * 1279)
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", "VECTOR_INVALID")
    e = err(client.set_image, db_name, "g", vector=[0.0] * 1280)
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", "VECTOR_INVALID")
    e = err(client.search, db_name, vector=[math.inf] * 1280)
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", "VECTOR_INVALID")
    assert client.get_database(db_name).image_count == 0  # nothing half-applied


def test_search_argument_errors(client, db_name, good):
    client.set_image(db_name, "g", image=good)
    for kwargs, reason in [
        ({"image": good, "top_k": -1}, "TOP_K_INVALID"),
        ({"image": good, "top_k": 5000}, "TOP_K_INVALID"),
        ({"image": good, "min_score": 2.0}, "MIN_SCORE_INVALID"),
        ({}, "QUERY_MISSING"),
    ]:
        e = err(client.search, db_name, **kwargs)
        assert (e.code, e.reason) == ("INVALID_ARGUMENT", reason), kwargs
    e = err(client.search, db_name, registered=("g", 99))
    assert (e.code, e.reason) == ("NOT_FOUND", "IMAGE_NOT_FOUND")


def test_ids_are_validated(client, db_name):
    v = [1.0] + [0.0] * 1279
    assert err(client.set_image, db_name, "", vector=v).reason == "GROUP_ID_INVALID"
    assert err(client.set_image, db_name, "g" * 300, vector=v).reason == "GROUP_ID_INVALID"
    assert err(client.set_image, db_name, "a\nb", vector=v).reason == "GROUP_ID_INVALID"
    assert err(client.set_image, db_name, "g", vector=v, intra_id=-1).reason == "INTRA_ID_INVALID"
    assert err(client.set_image, db_name, "g").reason == "IMAGE_MISSING"
    assert err(client.delete_image, db_name, "g", 0).reason == "IMAGE_NOT_FOUND"
    assert err(client.delete_group, db_name, "nope").reason == "GROUP_NOT_FOUND"
    assert err(client.list_images, db_name, page_size=-3).reason == "PAGE_SIZE_INVALID"


def test_bad_page_token(client, db_name):
    from lookalike.v1 import database_service_pb2 as pb

    with pytest.raises(grpc.RpcError) as info:
        client.db_stub.ListImages(pb.ListImagesRequest(database=db_name, page_token="%%%"))
    status = rpc_status.from_call(info.value)
    detail = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(detail)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (detail.reason, detail.domain) == ("PAGE_TOKEN_INVALID", "lookalike")


def test_server_keeps_serving_after_errors(client, good):
    for _ in range(3):
        err(client.match, good, b"junk")
    assert client.match(good, good).cosine == pytest.approx(1.0, abs=1e-5)
