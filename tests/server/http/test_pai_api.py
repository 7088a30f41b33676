"""The PAI-EAS JSON API, called the way the PAI documentation's scripts call it.

``requests.post(url, data=json.dumps({...}), headers={"Authorization": token})`` with base64
images, against a live server with ``--http-port`` and a token; OSS paths against moto.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import requests
from moto_s3 import S3
from photos import crop, encode, photo

TOKEN = "NTE3Y2M2ZmEzZGQ3ZGRkOGM4ZDE1MDVhNzxxxxxxxxx"


@pytest.fixture(scope="module", params=["builtin", "milvus"])
def pai(request, tmp_path_factory):
    """The gateway on each index backend: the PAI scripts must not notice which one holds the data."""
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig
    from milvus_server import MilvusLite

    options, milvus = {}, None
    if request.param == "milvus":
        milvus = MilvusLite(tmp_path_factory.mktemp("pai-milvus") / "data")
        options = {"index": "milvus", "milvus_uri": milvus.uri, "milvus_index": "FLAT"}
    server = create_server(ServerConfig(port=0, http_port=0, token=TOKEN, snapshot_interval_s=0,
                                        data_dir=tmp_path_factory.mktemp("pai"), **options))  # fmt: skip
    yield server, f"http://127.0.0.1:{server.http_port}/api/predict/img_retrieval_001"
    server.stop(0)
    if milvus is not None:
        milvus.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("utf-8")


def call(url: str, payload: dict, token: str = TOKEN) -> tuple[int, dict]:
    r = requests.post(url, data=json.dumps(payload), headers={"Authorization": token}, timeout=120)
    return r.status_code, r.json()


def retrieval(url: str, name: str, **params) -> tuple[int, dict]:
    return call(url, {"function_name": name, "function_params": params})


def test_img_match_script(pai):
    _, url = pai
    a, b = encode(photo("chelsea")), encode(crop(photo("chelsea"), 0.85))
    status, body = call(url, {"imagea": b64(a), "imageb": b64(b)})
    assert status == 200 and body["success"] is True and body["error_code"] == ""
    assert set(body) >= {"request_id", "success", "status", "info", "error_code", "error_msg", "similarity"}
    _, other = call(url, {"imagea": b64(a), "imageb": b64(encode(photo("rocket")))})
    assert 0.0 <= other["similarity"] < body["similarity"] <= 1.0  # the crop is closer than another photo


def test_the_retrieval_scripts_in_order(pai):
    server, url = pai
    db = "tongxin_demo"
    assert retrieval(url, "init", backend="local", root_path="unused")[1]["info"] == "init db success."
    status, body = retrieval(url, "add", database_name=db, feature_dim_dict={"feature": 384},
                             feature_distance_dict={"feature": "Cosine"})  # fmt: skip
    assert status == 400 and body["error_code"] == "DIMENSION_MISMATCH" and "1280" in body["error_msg"]
    status, body = retrieval(url, "add", database_name=db, feature_dim_dict={"feature": 1280},
                             feature_distance_dict={"feature": "Cosine"})  # fmt: skip
    assert status == 200 and body["name"] == db
    names = ["chelsea", "coffee", "astronaut", "rocket", "camera"]
    for i, name in enumerate(names):
        status, body = retrieval(url, "db_set", database_name=db, image=b64(encode(photo(name))), group_id=str(888 + i),
                                 intra_id=10)  # fmt: skip
        assert status == 200 and (body["group_id"], body["intra_id"]) == (str(888 + i), 10)
    status, body = retrieval(url, "db_set", database_name=db, image=b64(encode(photo("coffee"))), group_id="889")
    assert body["intra_id"] == 11  # next in the group when intra_id is omitted
    query = b64(encode(crop(photo("astronaut"), 0.8)))
    status, body = retrieval(url, "db_search", database_name=db, image=query, search_topk=3)
    assert status == 200 and len(body["results"]) == 3
    assert body["results"][0]["group_id"] == "890"  # the astronaut, not just any hit
    assert body["results"][0]["score"] >= body["results"][1]["score"]
    # The same answer over gRPC: one core behind both wires.
    from lookalike.client import LookalikeClient

    with LookalikeClient(server.address, token=TOKEN) as c:
        hits = c.search(db, image=base64.b64decode(query), top_k=3).hits
    assert [(h.key.group_id, h.key.intra_id) for h in hits] == [(r["group_id"], r["intra_id"]) for r in body["results"]]
    assert retrieval(url, "get")[1]["db_dict"][db]["size"] == 6
    assert [e["intra_id"] for e in retrieval(url, "db_get", database_name=db, group_id="889")[1]["entries"]] == [10, 11]
    assert retrieval(url, "db_delete", database_name=db, group_id="889", intra_id=11)[1]["deleted"] == 1
    assert retrieval(url, "db_delete", database_name=db, group_id="891")[1]["deleted"] == 1
    assert retrieval(url, "get", database_name=db)[1]["db_dict"][db]["size"] == 4
    assert retrieval(url, "db_clean", database_name=db)[1]["cleaned"] == 4
    assert retrieval(url, "get", database_name=db)[1]["db_dict"][db]["size"] == 0
    assert retrieval(url, "delete", database_name=db)[0] == 200
    assert db not in retrieval(url, "get")[1]["db_dict"]


@pytest.mark.parametrize(
    "payload, status, code",
    [
        ({"function_name": "nope"}, 400, "FUNCTION_UNKNOWN"),
        ({"function_name": "add", "function_params": {}}, 400, "PARAM_MISSING"),
        ({"function_name": "add", "function_params": {"database_name": 5}}, 400, "PARAM_INVALID"),
        (
            {"function_name": "db_search", "function_params": {"database_name": "x", "image": "%%%"}},
            400,
            "BASE64_INVALID",
        ),
        (
            {"function_name": "db_search", "function_params": {"database_name": "nodb", "image": b64(b"junk")}},
            404,
            "DATABASE_NOT_FOUND",
        ),
        ({"imagea": b64(b"not an image"), "imageb": b64(b"junk")}, 400, "IMAGE_UNDECODABLE"),
        ({"hello": 1}, 400, "REQUEST_INVALID"),
    ],
)
def test_bad_requests_get_4xx_with_a_code_that_says_what_to_fix(pai, payload, status, code):
    _, url = pai
    got, body = call(url, payload)
    assert (got, body["success"], body["error_code"]) == (status, False, code)
    assert body["error_msg"] and "Traceback" not in body["error_msg"]


def test_auth_body_and_content_type(pai):
    _, url = pai
    status, body = call(url, {"function_name": "get"}, token="wrong")
    assert status == 401 and body["error_code"] == "TOKEN_INVALID" and "db_dict" not in body
    assert call(url, {"function_name": "get"}, token="Bearer " + TOKEN)[0] == 200
    r = requests.post(url, data=b"{not json", headers={"Authorization": TOKEN}, timeout=30)
    assert r.status_code == 400 and r.json()["error_code"] == "JSON_INVALID"
    r = requests.post(url, data=b"x", headers={"Authorization": TOKEN, "Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 400 and r.json()["error_code"] == "CONTENT_TYPE_INVALID"
    r = requests.post(url, data=b"[" * 100_000, headers={"Authorization": TOKEN}, timeout=30)
    assert r.status_code == 400
    spec = requests.get(url.split("/api/")[0] + "/openapi.json", timeout=30).json()
    assert "/api/predict/{service_name}" in spec["paths"] and "/" in spec["paths"]


def test_fuzzed_requests_never_get_a_5xx(pai):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    _, url = pai
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False),
                        st.text(max_size=20))  # fmt: skip
    keys = "database_name group_id intra_id image search_topk feature_dim_dict backend root_path oss_io_config"
    params = st.dictionaries(
        st.sampled_from(keys.split()),
        st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=3)),
        max_size=5,
    )
    names = st.sampled_from(["init", "add", "delete", "get", "save", "load", "db_set", "db_get", "db_delete",
                             "db_search", "db_clean", "other"])  # fmt: skip

    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
    @hypothesis.given(name=names, p=params)
    def check(name, p):
        status, body = call(url, {"function_name": name, "function_params": p})
        assert status < 500, (name, p, body)
        assert body["success"] is (status == 200)

    check()


def test_oss_paths_and_save_load_through_the_oss_root(tmp_path, monkeypatch):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    srv = S3("tongxin-lly")
    endpoint, s3 = srv.endpoint, srv.client
    prefix = uuid.uuid4().hex
    s3.put_object(Bucket="tongxin-lly", Key=f"{prefix}/img/010.jpg", Body=encode(photo("coffee")))
    monkeypatch.setenv("OSS_PATH_STYLE", "1")
    server = create_server(ServerConfig(port=0, http_port=0, snapshot_interval_s=0, data_dir=tmp_path / "d",
                                        oss_path_style=True, pai_init_shared=True, oss_endpoint_allow=endpoint,
                                        oss_allow=f"oss://tongxin-lly/{prefix}/"))  # fmt: skip
    url = f"http://127.0.0.1:{server.http_port}/"
    status, body = retrieval(url, "save", database_name="x")
    assert (status, body["error_code"]) == (412, "NOT_INITIALIZED")  # save/load need init's root first
    secret = "gsiu1HjLGD-SECRET-never-logged"
    try:
        cfg = {"ak_id": "LTAIcsTEST", "ak_secret": secret, "hosts": endpoint, "buckets": ["tongxin-lly"]}
        status, body = retrieval(url, "init", backend="oss", root_path=f"oss://tongxin-lly/{prefix}/db/",
                                 oss_io_config=cfg)  # fmt: skip
        assert status == 200 and secret not in json.dumps(body)
        retrieval(url, "add", database_name="demo", feature_dim_dict={"feature": 1280})
        status, body = retrieval(url, "db_set", database_name="demo", image=f"oss://tongxin-lly/{prefix}/img/010.jpg",
                                 group_id="888", intra_id=10)  # fmt: skip
        assert status == 200, body
        retrieval(url, "db_set", database_name="demo", image=b64(encode(photo("rocket"))), group_id="889")
        assert retrieval(url, "save", database_name="demo")[1]["saved"] == {"demo": 2}
        retrieval(url, "db_clean", database_name="demo")
        status, body = retrieval(url, "load", database_name="demo")
        assert status == 200 and body["loaded"] == {"demo": 2}
        _, body = retrieval(url, "db_search", database_name="demo", image=b64(encode(crop(photo("coffee"), 0.8))),
                            search_topk=2)  # fmt: skip
        assert body["results"][0]["group_id"] == "888"
        status, body = retrieval(url, "db_set", database_name="demo", image=f"oss://tongxin-lly/{prefix}/none.jpg",
                                 group_id="x")  # fmt: skip
        assert status == 400 and body["error_code"] == "IMAGE_NOT_FOUND"
        # The old-style bulk set from an image list in the bucket (paths relative to the list).
        s3.put_object(Bucket="tongxin-lly", Key=f"{prefix}/img/rocket.jpg", Body=encode(photo("rocket")))
        s3.put_object(Bucket="tongxin-lly", Key=f"{prefix}/img/list.txt",
                      Body=b"010.jpg,900,1\nrocket.jpg,901\nmissing.jpg,902\n")  # fmt: skip
        status, body = retrieval(url, "set", database_name="demo", filelist=f"oss://tongxin-lly/{prefix}/img/list.txt")
        assert status == 200 and body["succeeded"] == 2 and body["failures"][0]["error_code"] == "IMAGE_NOT_FOUND"
        assert {(k["group_id"], k["intra_id"]) for k in body["keys"]} == {("900", 1), ("901", 0)}
        status, body = retrieval(url, "set", database_name="demo", filelist="/etc/passwd")
        assert status == 400 and body["error_code"] == "PARAM_INVALID"  # never the server's own files
    finally:
        server.stop(0)
        srv.stop()
    written = b"".join(p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file())
    assert secret.encode() not in written


def test_an_oversized_body_gets_413_with_the_limit(tmp_path):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    server = create_server(ServerConfig(port=0, http_port=0, max_message_bytes=1 << 16, persist=False,
                                        data_dir=tmp_path))  # fmt: skip
    try:
        url = f"http://127.0.0.1:{server.http_port}/"
        status, body = call(url, {"imagea": b64(b"x" * 100_000), "imageb": b64(b"y")}, token="")
        assert (status, body["success"], body["error_code"]) == (413, False, "MESSAGE_TOO_LARGE")
        assert "65536" in body["error_msg"]
        assert call(url, {"function_name": "get"}, token="")[0] == 200  # and the server goes on
    finally:
        server.stop(0)
