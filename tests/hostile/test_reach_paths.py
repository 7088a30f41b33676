"""Server-side paths stay under the export root (issue 22, finding 1), through gRPC, the CLI and PAI.

Exports, imports and PAI local roots resolve under ``--export-root``; an absolute path outside it,
``..`` and a symlink that leads out are refused with PERMISSION_DENIED / PATH_NOT_ALLOWED, in one
message whatever exists there; a relative path is taken relative to the root. Permanent failures
(a file in the way, ``oss://`` without OSS) get a 4xx code, never a retry-later one. Search
fields are bounded like the values they match.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from lookalike.client import ClientError, LookalikeClient

TOKEN = "reach-paths-token"


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reach")
    root, outside = base / "exports", base / "outside"
    root.mkdir()
    (outside / "there").mkdir(parents=True)
    (outside / "there" / "secret.txt").write_text("not for clients")
    (root / "link").symlink_to(outside, target_is_directory=True)  # inside the root, leading out of it
    (root / "a-file").write_text("a file, not a folder")
    return {"base": base, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def served(place: dict[str, Path]) -> Iterator[tuple[Any, LookalikeClient, str]]:
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    server = create_server(ServerConfig(port=0, http_port=0, token=TOKEN, snapshot_interval_s=0,
                                        data_dir=place["base"] / "data", export_root=place["root"]))  # fmt: skip
    with LookalikeClient(server.address, token=TOKEN) as c:
        c.create_database("src")
        rng = np.random.default_rng(0)
        for i in range(3):
            c.set_image("src", f"g{i}", vector=rng.standard_normal(server.service.dimension).tolist())
        yield server, c, f"http://127.0.0.1:{server.http_port}/api/predict/reach"
    server.stop(0)


def outside_files(place: dict[str, Path]) -> list[str]:
    return sorted(str(p.relative_to(place["outside"])) for p in place["outside"].rglob("*"))


ESCAPES = ["{outside}/there", "{outside}/new-folder", "../outside/there", "sub/../../outside/x", "link/there",
           "link/new-folder", "/etc"]  # fmt: skip


@pytest.mark.parametrize("where", ESCAPES)
def test_grpc_export_and_import_outside_the_root_are_refused_alike(served, place, where):
    _, c, _ = served
    before = outside_files(place)
    location = where.format(outside=place["outside"])
    messages = set()
    for call in (lambda: c.export_database("src", location), lambda: c.import_database("copy", location)):
        with pytest.raises(ClientError) as err:
            call()
        assert (err.value.code, err.value.reason) == ("PERMISSION_DENIED", "PATH_NOT_ALLOWED"), err.value
        messages.add(err.value.message.replace("source", "destination"))
    assert outside_files(place) == before  # nothing written, no folder made
    assert len(messages) == 1


def test_the_message_never_says_whether_a_path_exists(served, place):
    _, c, _ = served
    texts = []
    for where in (place["outside"] / "there", place["outside"] / "nothing-here", Path("/etc"), Path("/no/such/dir")):
        with pytest.raises(ClientError) as err:
            c.import_database("copy", str(where))
        texts.append((err.value.code, err.value.reason, err.value.message))
    assert len(set(texts)) == 1, texts
    assert "there" not in texts[0][2] and "exist" not in texts[0][2]


def test_a_relative_path_lands_under_the_root_and_imports_back(served, place):
    _, c, _ = served
    assert c.export_database("src", "rel/copy").image_count == 3
    assert (place["root"] / "rel" / "copy" / "lookalike-export.json").is_file()
    assert c.import_database("rel-copy", "rel/copy").image_count == 3
    assert c.import_database("abs-copy", str(place["root"] / "rel" / "copy")).image_count == 3  # absolute, inside


def test_permanent_failures_are_not_retry_later_codes(served):
    _, c, _ = served
    with pytest.raises(ClientError) as err:
        c.export_database("src", "a-file")  # a file where the folder should be
    assert err.value.code == "FAILED_PRECONDITION" and err.value.reason == "DESTINATION_NOT_DIRECTORY"
    with pytest.raises(ClientError) as err:
        c.export_database("src", "a-file/below")
    assert err.value.code == "FAILED_PRECONDITION", err.value
    with pytest.raises(ClientError) as err:
        c.export_database("src", "oss://bucket/prefix/")  # this server has no OSS access
    assert (err.value.code, err.value.reason) == ("FAILED_PRECONDITION", "OSS_NOT_CONFIGURED")


def test_search_fields_are_bounded_like_what_they_match(served):
    server, c, _ = served
    v = np.ones(server.service.dimension).tolist()
    with pytest.raises(ClientError) as err:
        c.search("src", vector=v, group_id_prefix="g" * 1_000_000)
    assert (err.value.code, err.value.reason) == ("INVALID_ARGUMENT", "GROUP_ID_PREFIX_INVALID")
    with pytest.raises(ClientError) as err:
        c.search("src", vector=v, filter={"k" * 100_000: "v"})
    assert err.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ClientError) as err:
        c.search("src", vector=v, filter={"source": "v" * 100_000})
    assert err.value.code == "INVALID_ARGUMENT"
    assert len(c.search("src", vector=v, group_id_prefix="g" * 256).hits) == 0  # as long as a group id: fine


def pai(url: str, name: str, token: str | None = TOKEN, **params: Any) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": token} if token else {}
    r = requests.post(url, data=json.dumps({"function_name": name, "function_params": params}), headers=headers,
                      timeout=120)  # fmt: skip
    return r.status_code, r.json()


@pytest.mark.parametrize("root", ["{outside}", "../outside", "link", "link/there", "/tmp"])
def test_pai_local_roots_outside_the_export_root_are_refused(served, place, root):
    _, _, url = served
    before = outside_files(place)
    status, body = pai(url, "init", backend="local", root_path=root.format(outside=place["outside"]))
    assert (status, body["error_code"]) == (403, "PATH_NOT_ALLOWED"), body
    status, body = pai(url, "save", database_name="src")
    assert status in (403, 412) and outside_files(place) == before  # the refused root was not kept


def test_pai_save_and_load_under_a_relative_root(served, place):
    _, _, url = served
    assert pai(url, "init", backend="local", root_path="pai-root")[0] == 200
    status, body = pai(url, "save", database_name="src")
    assert status == 200 and body["saved"] == {"src": 3}, body
    assert (place["root"] / "pai-root" / "src" / "lookalike-export.json").is_file()
    status, body = pai(url, "load", database_name="src")
    assert status == 200 and body["loaded"] == {"src": 3}, body


def test_pai_image_fields_never_read_local_files(served, place):
    _, _, url = served
    secret = str(place["outside"] / "there" / "secret.txt")
    for image in (secret, f"file://{secret}", "/etc/hostname"):
        status, body = pai(url, "db_set", database_name="src", group_id="x", image=image)
        assert status == 400 and body["error_code"] == "BASE64_INVALID", body


def test_pai_init_without_tokens_is_refused_unless_shared(tmp_path):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    server = create_server(ServerConfig(port=0, http_port=0, persist=False, data_dir=tmp_path))
    try:
        url = f"http://127.0.0.1:{server.http_port}/"
        status, body = pai(url, "init", token=None, backend="local", root_path="r")
        assert (status, body["error_code"]) == (412, "INIT_NOT_SHARED") and "--pai-init-shared" in body["error_msg"]
    finally:
        server.stop(0)


def test_cli_export_and_import_stay_under_the_root(place):
    from journeys.cli import run, serving

    root = place["base"] / "cli-root"
    with serving(place["base"] / "cli-data", "--export-root", str(root)) as (_, address):
        srv = ["--server", address]
        assert run("db", "create", "shop", *srv).returncode == 0
        for where in (str(place["outside"] / "cli"), "../outside/cli", "/tmp/lookalike-cli-escape"):
            for action, name in (("export", "shop"), ("import", "shop2")):
                done = run("db", action, name, where, *srv)
                assert done.returncode != 0 and "PATH_NOT_ALLOWED" in done.stderr, (action, where, done.stderr)
        assert not (place["outside"] / "cli").exists() and not Path("/tmp/lookalike-cli-escape").exists()
        done = run("db", "export", "shop", "copy", *srv, "--json")
        assert done.returncode == 0, done.stderr
        assert (root / "copy" / "lookalike-export.json").is_file()  # relative: under --export-root
        assert run("db", "import", "shop2", "copy", *srv).returncode == 0


def test_the_milvus_token_is_never_a_flag(tmp_path):
    from lookalike.server.config import ServerConfig

    done = subprocess.run([sys.executable, "-m", "lookalike", "serve", "--port", "0", "--data-dir", str(tmp_path),
                           "--milvus-token", "root:SECRET"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode not in (0, 1), done.stderr  # a usage error, before anything starts
    assert "LOOKALIKE_MILVUS_TOKEN" in done.stderr and "--milvus-token-file" in done.stderr
    assert "SECRET" not in done.stderr
    (tmp_path / "milvus.token").write_text("root:FROM-FILE\n")
    assert ServerConfig(milvus_token_file=tmp_path / "milvus.token").milvus_secret() == "root:FROM-FILE"
    config = ServerConfig.from_sources(None, {"LOOKALIKE_MILVUS_TOKEN": "root:FROM-ENV"})
    assert config.milvus_secret() == "root:FROM-ENV" and "FROM-ENV" not in repr(config)
