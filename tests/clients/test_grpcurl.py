"""grpcurl against a real server with reflection: the examples of clients/grpcurl/README.md."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from photos import crop, encode, photo

pytestmark = pytest.mark.go

ROOT = Path(__file__).resolve().parents[2]
SERVICES = (
    "lookalike.v1.MatchService",
    "lookalike.v1.DatabaseService",
    "lookalike.v1.SearchService",
    "lookalike.v1.DuplicateService",
    "lookalike.v1.OperationService",
    "lookalike.v1.ModelService",
)


@pytest.fixture(scope="module")
def grpcurl() -> Path:
    """The pinned grpcurl from .tools/bin, installed by scripts/install-tools.sh."""
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain ('go') is not on PATH; scripts/install-tools.sh builds grpcurl with it")
    proc = subprocess.run([ROOT / "scripts" / "install-tools.sh"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"scripts/install-tools.sh exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return ROOT / ".tools" / "bin" / "grpcurl"


Request = dict[str, Any] | list[dict[str, Any]]


def call(
    grpcurl: Path, address: str, *args: str, data: Request | None = None, flags: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """grpcurl -plaintext FLAGS [-d @] ADDRESS ARGS... (flags go before the address).

    ``data`` is sent as JSON on stdin: one object, or a list sent as one object per line
    (a client stream)."""
    stdin_flags = ["-d", "@"] if data is not None else []
    cmd = [str(grpcurl), "-plaintext", *flags, *stdin_flags, address, *args]
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_TOKEN"}
    return subprocess.run(
        cmd,
        input=None if data is None else "\n".join(json.dumps(d) for d in ([data] if isinstance(data, dict) else data)),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def call_ok(grpcurl: Path, address: str, *args: str, data: Request | None = None) -> dict[str, Any]:
    proc = call(grpcurl, address, *args, data=data)
    if proc.returncode != 0:
        pytest.fail(f"grpcurl {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout)


def b64(data: bytes) -> str:
    """grpcurl's JSON (proto3 JSON mapping) carries bytes fields as standard base64."""
    return base64.b64encode(data).decode("ascii")


def test_reflection_lists_the_services(grpcurl, grpc_server):
    proc = call(grpcurl, grpc_server.address, "list")
    assert proc.returncode == 0, proc.stderr
    listed = set(proc.stdout.split())
    assert set(SERVICES) <= listed, proc.stdout


def test_describe_shows_the_rpcs(grpcurl, grpc_server):
    proc = call(grpcurl, grpc_server.address, "describe", "lookalike.v1.MatchService")
    assert proc.returncode == 0, proc.stderr
    assert "rpc Match ( .lookalike.v1.MatchRequest ) returns ( .lookalike.v1.MatchResponse )" in proc.stdout
    proc = call(grpcurl, grpc_server.address, "describe", "lookalike.v1.MatchRequest")
    assert proc.returncode == 0, proc.stderr
    assert ".lookalike.v1.Image image_a = 1;" in proc.stdout


def test_match_with_json(grpcurl, grpc_server):
    chelsea = encode(photo("chelsea"))
    same = call_ok(
        grpcurl,
        grpc_server.address,
        "lookalike.v1.MatchService/Match",
        data={"image_a": {"content": b64(chelsea)}, "image_b": {"content": b64(chelsea)}},
    )
    assert same["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert same["model"]
    cropped = call_ok(
        grpcurl,
        grpc_server.address,
        "lookalike.v1.MatchService/Match",
        data={"imageA": {"content": b64(chelsea)}, "imageB": {"content": b64(encode(crop(photo("chelsea"))))}},
    )
    other = call_ok(
        grpcurl,
        grpc_server.address,
        "lookalike.v1.MatchService/Match",
        data={"image_a": {"content": b64(chelsea)}, "image_b": {"content": b64(encode(photo("coffee")))}},
    )
    assert 0.0 <= other["similarity"] < cropped["similarity"] <= 1.0


def test_match_error_shows_code_and_reason(grpcurl, grpc_server):
    proc = call(
        grpcurl,
        grpc_server.address,
        "lookalike.v1.MatchService/Match",
        data={"image_a": {"content": b64(b"not an image")}, "image_b": {"content": b64(encode(photo("coffee")))}},
        flags=["-format-error"],
    )
    assert proc.returncode != 0
    err = json.loads(proc.stderr)  # -format-error: the google.rpc.Status as JSON, on stderr
    assert err["code"] == 3  # INVALID_ARGUMENT
    [info] = err["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "IMAGE_UNDECODABLE" and info["domain"] == "lookalike", err


def test_database_register_and_search(grpcurl, grpc_server):
    address = grpc_server.address
    name = f"grpcurl-{uuid.uuid4().hex[:8]}"
    created = call_ok(grpcurl, address, "lookalike.v1.DatabaseService/CreateDatabase", data={"name": name})
    assert created["database"]["name"] == name
    key = call_ok(
        grpcurl,
        address,
        "lookalike.v1.DatabaseService/SetImage",
        data={"database": name, "group_id": "cat", "image": {"content": b64(encode(photo("chelsea")))}},
    )["key"]
    assert key == {"group_id": "cat"}  # grpcurl prints the .proto names and leaves out intra_id 0
    bulk = call_ok(
        grpcurl,
        address,
        "lookalike.v1.DatabaseService/BulkSetImages",
        data=[
            {"database": name, "group_id": "coffee", "image": {"content": b64(encode(photo("coffee")))}},
            {"group_id": "rocket", "image": {"content": b64(encode(photo("rocket")))}, "client_ref": "rocket.jpg"},
            {"group_id": "junk", "image": {"content": b64(b"not an image")}, "client_ref": "junk.jpg"},
        ],
    )
    assert (bulk["received_count"], bulk["succeeded_count"], bulk["failed_count"]) == ("3", "2", "1")
    assert [k["group_id"] for k in bulk["keys"]] == ["coffee", "rocket"]
    [failure] = bulk["failures"]
    assert failure["client_ref"] == "junk.jpg" and failure["reason"] == "IMAGE_UNDECODABLE"
    query = encode(crop(photo("rocket"), 0.6, 0.2), quality=70)
    found = call_ok(
        grpcurl,
        address,
        "lookalike.v1.SearchService/Search",
        data={"database": name, "image": {"content": b64(query)}, "top_k": 2},
    )
    assert len(found["hits"]) == 2
    assert found["hits"][0]["key"]["group_id"] == "rocket"
    assert int(found["searched_count"]) == 3  # int64 travels as a JSON string
    call_ok(grpcurl, address, "lookalike.v1.DatabaseService/DeleteDatabase", data={"name": name})


def test_find_duplicates_with_json(grpcurl, grpc_server, client):
    """FindDuplicates, WaitOperation and ListDuplicateClusters as JSON over reflection."""
    import numpy as np

    db = f"grpcurl-dedup-{uuid.uuid4().hex[:8]}"
    client.create_database(db)
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((20, 1280)).astype(np.float32)
        x[19] = x[3] + 0.01 * rng.standard_normal(1280).astype(np.float32)  # a copy of image 3
        for i, v in enumerate(x):
            client.set_image(db, f"img{i}", vector=(v / np.linalg.norm(v)).tolist())
        started = call_ok(grpcurl, grpc_server.address, "lookalike.v1.DuplicateService/FindDuplicates",
                          data={"database": db, "threshold": 0.95})  # fmt: skip
        name = started["operation"]["name"]
        assert name.startswith("operations/")
        done = call_ok(grpcurl, grpc_server.address, "lookalike.v1.OperationService/WaitOperation",
                       data={"name": name, "timeoutSeconds": 30})["operation"]  # fmt: skip
        assert done["state"] == "OPERATION_STATE_SUCCEEDED" and int(done["find_duplicates"]["cluster_count"]) == 1, done
        page = call_ok(grpcurl, grpc_server.address, "lookalike.v1.DuplicateService/ListDuplicateClusters",
                       data={"operation": name})  # fmt: skip
        (cluster,) = page["clusters"]
        assert sorted(m["key"]["group_id"] for m in cluster["members"]) == ["img19", "img3"]
    finally:
        client.delete_database(db)


def test_kept_thumbnail_and_models_with_json(grpcurl, grpc_server, client):
    """GetImage with a view returns the kept bytes (base64 in JSON); ListModels names the databases."""
    db = f"grpcurl-keep-{uuid.uuid4().hex[:8]}"
    created = call_ok(grpcurl, grpc_server.address, "lookalike.v1.DatabaseService/CreateDatabase",
                      data={"name": db, "keep": "original"})["database"]  # fmt: skip
    try:
        assert created["keep"] == "original" and created["model_loaded"] is True
        sent = encode(photo("coffee"))
        client.set_image(db, "cup", image=sent)
        got = call_ok(grpcurl, grpc_server.address, "lookalike.v1.DatabaseService/GetImage",
                      data={"database": db, "key": {"group_id": "cup"}, "view": "IMAGE_VIEW_ORIGINAL"})  # fmt: skip
        assert base64.b64decode(got["image_data"]) == sent and got["media_type"] == "image/jpeg"
        models = call_ok(grpcurl, grpc_server.address, "lookalike.v1.ModelService/ListModels", data={})["models"]
        assert any(db in m.get("databases", []) and m["loaded"] for m in models)
    finally:
        client.delete_database(db)
