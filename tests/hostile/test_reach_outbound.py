"""Outbound fetches go only where the operator said, and image lists stream (issue 22, findings 2 and 3).

A PAI ``init`` naming an OSS endpoint (``oss_io_config.hosts``) that ``--oss-endpoint-allow`` does not
list is refused before anything is sent: a loopback listener sees no request. ``init`` applies to
the caller's token only. What a store answers never comes back to the caller: a list whose lines
are not images fails by line number, a refused fetch by status. A list over ``--max-list-items``
is refused before any image is read, and a list is registered a chunk at a time as it is read.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import requests
from moto_s3 import S3
from PIL import Image

TOKEN_A, TOKEN_B = "reach-token-a", "reach-token-b"
KEYS = {"ak_id": "LTAIreach", "ak_secret": "reach-secret-never-echoed"}
MARKER = "REMOTE-BODY-MARKER"
MAX_LIST = 50


class Listener:
    """A loopback HTTP server that answers every request with ``answer(path)`` and counts what it got."""

    def __init__(self, answer: Any = None) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                outer.paths.append(self.path)
                status, body = (answer or (lambda path: (200, b"")))(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def lines_answer(path: str) -> tuple[int, bytes]:
    if path.endswith("/long.txt"):
        return 200, b"".join(b"img%d.jpg\n" % i for i in range(MAX_LIST + 1))
    if path.endswith("/refused.txt"):
        return 403, f"<Error><Code>AccessDenied</Code><Message>{MARKER}</Message></Error>".encode()
    return 200, f"{MARKER}-1\n{MARKER}-2\n# a comment\n".encode()  # a page that is not an image list


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    tmp = tmp_path_factory.mktemp("outbound")
    forbidden, allowed, moto = Listener(), Listener(lines_answer), S3("shop")
    (tmp / "tokens").write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
    server = create_server(ServerConfig(
        port=0, http_port=0, token_file=tmp / "tokens", data_dir=tmp / "data", snapshot_interval_s=0,
        oss_path_style=True, max_list_items=MAX_LIST, oss_allow="oss://lists/,oss://shop/allowed/",
        oss_endpoint_allow=f"{allowed.url},{moto.endpoint},http://*:{forbidden.url.rsplit(':', 1)[1]}",
    ))  # fmt: skip
    url = f"http://127.0.0.1:{server.http_port}/api/predict/outbound"
    for token in (TOKEN_A, TOKEN_B):
        pai(url, "add", token, database_name=f"db-{token[-1]}")
    yield {"server": server, "url": url, "forbidden": forbidden, "allowed": allowed, "moto": moto}
    server.stop(0)
    for thing in (forbidden, allowed, moto):
        thing.stop()


def pai(url: str, name: str, token: str, **params: Any) -> tuple[int, dict[str, Any]]:
    r = requests.post(url, data=json.dumps({"function_name": name, "function_params": params}),
                      headers={"Authorization": token}, timeout=300)  # fmt: skip
    return r.status_code, r.json()


@pytest.mark.parametrize("hosts", ["{forbidden}", "127.0.0.1:{port}", "http://localhost:{port}", "http://10.1.2.3:80",
                                   "http://169.254.169.254", "http://[::1]:{port}"])  # fmt: skip
def test_init_never_reaches_an_endpoint_the_operator_did_not_list(world, hosts):
    listener = world["forbidden"]
    hosts = hosts.format(forbidden=listener.url, port=listener.url.rsplit(":", 1)[1])
    status, body = pai(world["url"], "init", TOKEN_A, backend="oss", root_path="oss://lists/db/",
                       oss_io_config={**KEYS, "hosts": hosts})  # fmt: skip
    assert (status, body["error_code"]) == (403, "ENDPOINT_NOT_ALLOWED"), body
    for name, params in (("db_set", {"database_name": "db-a", "group_id": "g", "image": "oss://lists/x.jpg"}),
                         ("set", {"database_name": "db-a", "filelist": "oss://lists/list.txt"}),
                         ("save", {"database_name": "db-a"}), ("load", {"database_name": "db-a"})):  # fmt: skip
        status, body = pai(world["url"], name, TOKEN_A, **params)
        assert status < 500 and KEYS["ak_secret"] not in json.dumps(body), (name, body)
    assert listener.paths == []  # no request ever reached it: not even a connection test


def test_a_fetched_page_that_is_no_list_is_not_echoed(world):
    status, body = pai(world["url"], "init", TOKEN_A, backend="oss", root_path="oss://lists/db/",
                       oss_io_config={**KEYS, "hosts": world["allowed"].url})  # fmt: skip
    assert status == 200, body
    status, body = pai(world["url"], "set", TOKEN_A, database_name="db-a", filelist="oss://lists/page.txt")
    assert status == 200 and body["succeeded"] == 0 and body["failed"] == 2, body
    assert [f["line"] for f in body["failures"]] == [1, 2]
    assert MARKER not in json.dumps(body)
    status, body = pai(world["url"], "set", TOKEN_A, database_name="db-a", filelist="oss://lists/refused.txt")
    assert (status, body["error_code"]) == (412, "OSS_REFUSED") and MARKER not in json.dumps(body), body
    assert "AccessDenied" not in json.dumps(body)


def test_a_list_over_the_limit_is_refused_before_any_image_is_read(world):
    listener = world["allowed"]
    assert pai(world["url"], "init", TOKEN_A, backend="oss", root_path="oss://lists/db/",
               oss_io_config={**KEYS, "hosts": listener.url})[0] == 200  # fmt: skip
    before = len(listener.paths)
    status, body = pai(world["url"], "set", TOKEN_A, database_name="db-a", filelist="oss://lists/long.txt")
    assert (status, body["error_code"]) == (400, "LIST_TOO_LONG") and "--max-list-items" in body["error_msg"], body
    assert [p for p in listener.paths[before:] if "img" in p] == []  # only the list itself was read


def test_init_belongs_to_the_callers_token(world):
    url = world["url"]
    assert pai(url, "init", TOKEN_A, backend="local", root_path="a-root")[0] == 200
    status, body = pai(url, "init", TOKEN_B, backend="oss", root_path="oss://lists/b/",
                       oss_io_config={**KEYS, "hosts": world["allowed"].url})  # fmt: skip
    assert status == 200, body
    status, body = pai(url, "save", TOKEN_A, database_name="db-a")
    assert status == 200, body  # A's own local root, not B's OSS root
    assert (world["server"].service.boundaries.export_root / "a-root" / "db-a" / "lookalike-export.json").is_file()


def small_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def test_a_list_is_registered_a_chunk_at_a_time_as_it_is_read(world, monkeypatch):
    """Before: every listed image was read, then registered. Now the database grows while the list is read."""
    from lookalike.server.core.calls import BULK_CHUNK

    from lookalike.oss import OssClient

    moto, service, url = world["moto"], world["server"].service, world["url"]
    prefix = f"allowed/{uuid.uuid4().hex}"
    count = BULK_CHUNK + 12
    for i in range(count):
        moto.client.put_object(Bucket="shop", Key=f"{prefix}/{i}.jpg", Body=small_jpeg(i))
    moto.client.put_object(Bucket="shop", Key=f"{prefix}/list.txt",
                           Body="".join(f"{i}.jpg,g{i}\n" for i in range(count)).encode())  # fmt: skip
    status, body = pai(url, "init", TOKEN_B, backend="oss", root_path=f"oss://shop/{prefix}/db/",
                       oss_io_config={"ak_id": "ak", "ak_secret": "sk", "hosts": moto.endpoint})  # fmt: skip
    assert status == 200, body
    pai(url, "add", TOKEN_B, database_name="streamed")
    sizes: list[int] = []
    read = OssClient.read

    def counting(self: OssClient, ref: str, byte_range: Any = None) -> bytes:
        if ref.endswith(".jpg"):
            sizes.append(service.get_database("streamed").size)
        return read(self, ref, byte_range)

    monkeypatch.setattr(OssClient, "read", counting)
    status, body = pai(url, "set", TOKEN_B, database_name="streamed", filelist=f"oss://shop/{prefix}/list.txt")
    assert status == 200 and body["succeeded"] == count, body
    assert len(sizes) == count and sizes[-1] >= BULK_CHUNK, sizes  # the first chunk was stored before the last read
    # An image outside the allowed prefixes is refused, not fetched.
    moto.client.put_object(Bucket="shop", Key="private/x.jpg", Body=small_jpeg(0))
    status, body = pai(url, "db_set", TOKEN_B, database_name="streamed", group_id="p", image="oss://shop/private/x.jpg")
    assert (status, body["error_code"]) == (403, "PATH_NOT_ALLOWED"), body


def test_a_chunk_of_big_images_is_cut_short():
    from lookalike.server.core.calls import BULK_CHUNK_BYTES, BulkItem, take_chunk

    big = b"\0" * (8 << 20)
    stream = iter([BulkItem("g", None, image=big) for _ in range(100)])
    chunk = take_chunk(stream)
    assert len(chunk) == BULK_CHUNK_BYTES // len(big) and len(list(stream)) == 100 - len(chunk)


def test_the_cli_refuses_an_overlong_list_before_reading_any_image(tmp_path):
    from lookalike.client.importer import read_list

    from lookalike.oss import OssReader

    (tmp_path / "list.txt").write_text("# a comment\na.jpg\nb.jpg\nc.jpg\n")
    with pytest.raises(SystemExit, match="at most 2"):
        next(read_list(str(tmp_path / "list.txt"), OssReader(), "name", max_items=2))
    assert len(list(read_list(str(tmp_path / "list.txt"), OssReader(), "name", max_items=3))) == 3
