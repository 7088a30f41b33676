"""Kept images end to end over gRPC and HTTP: policies, views, re-embedding fidelity, reference counting,
restarts, exports, bulk streams, and a concurrent writer racing deletes of the same content."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from lookalike.client import BulkItem, ClientError, LookalikeClient
from lookalike.server.app import create_server
from lookalike.server.config import ServerConfig
from photos import PHOTO_NAMES, encode, photo, resize

TOKEN = "kept-images-token-0123456789"


def jpeg(name: str, scale: float = 1.0) -> bytes:
    arr = photo(name)
    return encode(resize(arr, scale) if scale != 1.0 else arr, "JPEG", quality=92)


def blobs(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "images").glob("??/*") if not p.name.startswith(".")}


class Server:
    def __init__(self, data_dir: Path, **options: object) -> None:
        self.data_dir = data_dir
        self.running = create_server(ServerConfig(port=0, http_port=0, data_dir=data_dir, token=TOKEN,
                                                  **options))  # type: ignore[arg-type]  # fmt: skip
        self.client = LookalikeClient(f"127.0.0.1:{self.running.port}", token=TOKEN)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.running.http_port}{path}"

    def get(self, path: str, token: str | None = TOKEN, **headers: str) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.url(path), headers={**headers, **({"Authorization": token} if token else {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def stop(self) -> None:
        self.client.close()
        self.running.stop(0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "data")
    yield s
    s.stop()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_policies_and_views(server: Server) -> None:
    c = server.client
    assert c.create_database("default").keep == "thumbnail"  # the server's --keep
    assert c.create_database("none", keep="none").keep == "none"
    assert c.create_database("orig", keep="original").keep == "original"
    with pytest.raises(ClientError) as err:
        c.create_database("bad", keep="everything")
    assert (err.value.code, err.value.reason) == ("INVALID_ARGUMENT", "KEEP_INVALID")
    sent = jpeg("astronaut")
    for db in ("default", "none", "orig"):
        c.set_image(db, "g", image=sent)
    data, media = c.get_image_bytes("default", "g", 0)
    assert media == "image/jpeg" and 0 < len(data) < len(sent)
    original, media = c.get_image_bytes("orig", "g", 0, "original")
    assert original == sent and media == "image/jpeg"
    for db, view in (("none", "thumbnail"), ("default", "original")):
        with pytest.raises(ClientError) as err:
            c.get_image_bytes(db, "g", 0, view)
        assert (err.value.code, err.value.reason) == ("NOT_FOUND", "IMAGE_NOT_KEPT")
    # A vector registration keeps nothing, and says so.
    c.set_image("default", "vec", vector=[1.0] + [0.0] * 1279)
    with pytest.raises(ClientError):
        c.get_image_bytes("default", "vec", 0)
    # The record names its kept blobs; a client cannot set those keys itself.
    attrs = dict(c.get_image("orig", "g", 0).attributes)
    assert set(attrs) >= {"lookalike.thumbnail", "lookalike.original", "lookalike.sha256"}
    with pytest.raises(ClientError) as err:
        c.set_image("default", "forged", image=sent, attributes={"lookalike.thumbnail": "0" * 64})
    assert err.value.code == "INVALID_ARGUMENT"


def test_thumbnail_re_embeds_faithfully(server: Server) -> None:
    """What reindex relies on: a thumbnail's vector is within cosine 0.995 of the original's."""
    c = server.client
    c.create_database("fid")
    scores = []
    for name in PHOTO_NAMES:
        sent = jpeg(name, 2.0)  # larger than the thumbnail, so it is really reduced
        c.set_image("fid", name, image=sent)
        thumb, _ = c.get_image_bytes("fid", name, 0)
        assert len(thumb) < len(sent)
        a, b = c.embed([sent, thumb]).embeddings
        scores.append(cosine(np.asarray(a.values), np.asarray(b.values)))
    assert float(np.median(scores)) >= 0.995, scores


def test_references_are_counted_across_databases_and_overwrites(server: Server) -> None:
    c = server.client
    c.create_database("a")
    c.create_database("b")
    first, second = jpeg("coffee"), jpeg("rocket")
    c.set_image("a", "g", image=first, intra_id=0)
    c.set_image("b", "g", image=first, intra_id=0)  # the same picture: one blob, two references
    (shared,) = blobs(server.data_dir)
    c.delete_image("a", "g", 0)
    assert blobs(server.data_dir) == {shared}  # still referenced by b
    c.set_image("b", "g", image=second, intra_id=0)  # overwrite: the old blob has no reference left
    assert shared not in blobs(server.data_dir) and len(blobs(server.data_dir)) == 1
    c.set_image("b", "h", image=first)
    c.delete_group("b", "h")
    c.set_image("a", "x", image=first)
    c.delete_database("a")
    assert len(blobs(server.data_dir)) == 1  # only b/g (second) is left
    thumb, _ = c.get_image_bytes("b", "g", 0)
    assert thumb


def test_kept_images_survive_a_restart_and_a_crash(tmp_path: Path) -> None:
    s = Server(tmp_path / "data")
    s.client.create_database("r", keep="original")
    sent = jpeg("chelsea")
    s.client.set_image("r", "g", image=sent)
    thumb, _ = s.client.get_image_bytes("r", "g", 0)
    s.client.close()
    s.running.stop(0, snapshot=False)  # no final snapshot: the log alone restores the references
    again = Server(tmp_path / "data")
    try:
        assert again.client.get_image_bytes("r", "g", 0) == (thumb, "image/jpeg")
        assert again.client.get_image_bytes("r", "g", 0, "original")[0] == sent
        assert again.running.service.catalog.kept.counts() == (2, 2)
        again.client.delete_image("r", "g", 0)
        assert blobs(tmp_path / "data") == set()
    finally:
        again.stop()


def test_bulk_stream_keeps_every_image(server: Server) -> None:
    c = server.client
    c.create_database("bulk")
    items = [BulkItem(n, image=jpeg(n)) for n in PHOTO_NAMES[:6]]
    result = c.bulk_set("bulk", iter(items))
    assert len(result.keys) == 6 and not result.failures
    for n in PHOTO_NAMES[:6]:
        assert c.get_image_bytes("bulk", n, 0)[0]
    named = {dict(c.get_image("bulk", n, 0).attributes)["lookalike.thumbnail"] for n in PHOTO_NAMES[:6]}
    assert blobs(server.data_dir) == named and len(named) == 5  # "cat" and "chelsea" are the same pixels


def test_export_carries_images_to_another_server(server: Server, tmp_path: Path) -> None:
    c = server.client
    c.create_database("src", keep="original")
    for n in PHOTO_NAMES[:3]:
        c.set_image("src", n, image=jpeg(n))
    c.export_database("src", "src-export")
    assert (server.data_dir / "exports" / "src-export" / "images").is_dir()
    other = Server(tmp_path / "other", export_root=server.data_dir / "exports")
    try:
        db = other.client.import_database("copy", "src-export")
        assert db.keep == "original" and db.image_count == 3
        for n in PHOTO_NAMES[:3]:
            assert other.client.get_image_bytes("copy", n, 0, "original")[0] == jpeg(n)
        assert len(blobs(tmp_path / "other")) == 6
    finally:
        other.stop()


def test_http_thumbnail_endpoint(server: Server) -> None:
    c = server.client
    c.create_database("web", keep="original")
    c.set_image("web", "sku-1", image=jpeg("camera"))
    thumb, _ = c.get_image_bytes("web", "sku-1", 0)
    status, body, headers = server.get("/v1/databases/web/images/sku-1/0/thumbnail")
    assert status == 200 and body == thumb and headers["content-type"] == "image/jpeg"
    digest = headers["etag"].strip('"')
    assert digest == dict(c.get_image("web", "sku-1", 0).attributes)["lookalike.thumbnail"]
    # The path names a key, whose image can be replaced: revalidated each time, never cached as immutable.
    assert headers["cache-control"] == "private, no-cache"
    status, body, _ = server.get("/v1/databases/web/images/sku-1/0/thumbnail", **{"If-None-Match": headers["etag"]})
    assert status == 304 and body == b""
    # A URL that names the bytes (?v= a digest prefix) is immutable; a stale or short prefix is not.
    status, body, named = server.get(f"/v1/databases/web/images/sku-1/0/thumbnail?v={digest[:16]}")
    assert status == 200 and body == thumb and "immutable" in named["cache-control"]
    assert (
        "immutable" not in server.get(f"/v1/databases/web/images/sku-1/0/thumbnail?v={digest[:8]}")[2]["cache-control"]
    )
    c.set_image("web", "sku-1", image=jpeg("coffee"), intra_id=0)  # the same key, other bytes
    status, body, replaced = server.get(f"/v1/databases/web/images/sku-1/0/thumbnail?v={digest[:16]}")
    assert status == 200 and body != thumb and replaced["etag"] != headers["etag"]
    assert "immutable" not in replaced["cache-control"]  # the old version's URL now answers with other bytes
    status, _, _ = server.get("/v1/databases/web/images/sku-1/0/thumbnail", **{"If-None-Match": headers["etag"]})
    assert status == 200  # the old ETag no longer matches
    status, body, _ = server.get("/v1/databases/web/images/sku-1/0/original")
    assert status == 200 and body == jpeg("coffee")
    status, body, _ = server.get("/v1/databases/web/images/sku-1/0/thumbnail", token=None)
    assert status == 401 and b"TOKEN_INVALID" in body
    status, body, _ = server.get("/v1/databases/web/images/sku-1/0/thumbnail", token="wrong")
    assert status == 401
    assert server.get("/v1/databases/web/images/nope/0/thumbnail")[0] == 404
    assert server.get("/v1/databases/missing/images/sku-1/0/thumbnail")[0] == 404
    status, body, _ = server.get("/v1/databases/web/images/sku-1/x/thumbnail")
    assert status == 400 and b"INTRA_ID_INVALID" in body
    c.delete_image("web", "sku-1", 0)
    assert server.get("/v1/databases/web/images/sku-1/0/thumbnail")[0] == 404


def test_a_revalidation_the_client_holds_reads_no_bytes(server: Server) -> None:
    """If-None-Match naming the kept digest answers 304 from the row alone: the blob is not read (on a restored
    machine that would be an OSS fetch per revalidation). Shown by taking the blob away behind the server's back."""
    c = server.client
    c.create_database("etag", keep="thumbnail")
    c.set_image("etag", "sku-9", image=jpeg("rocket"))
    path = "/v1/databases/etag/images/sku-9/0/thumbnail"
    status, _, headers = server.get(path)
    assert status == 200
    digest = headers["etag"].strip('"')
    (server.data_dir / "images" / digest[:2] / digest).unlink()  # the bytes are gone: only the row remains
    for held in (headers["etag"], f"W/{headers['etag']}", f'"{"0" * 64}", {headers["etag"]}', "*"):
        status, body, again = server.get(path, **{"If-None-Match": held})
        assert (status, body, again["etag"]) == (304, b"", headers["etag"]), held
    status, body, _ = server.get(path, **{"If-None-Match": f'"{"0" * 64}"'})  # another digest: the bytes are read
    assert status == 404 and b"IMAGE_BYTES_MISSING" in body


def test_a_writer_racing_deletes_of_the_same_content_never_loses_a_kept_image(server: Server) -> None:
    """Two databases register and delete the same picture concurrently; every image left has its bytes."""
    c = server.client
    c.create_database("p")
    c.create_database("q")
    sent = jpeg("hubble_deep_field", 0.5)
    errors: list[BaseException] = []

    def churn(db: str) -> None:
        try:
            with LookalikeClient(f"127.0.0.1:{server.running.port}", token=TOKEN) as own:
                for i in range(12):
                    own.set_image(db, f"g{i % 3}", image=sent, intra_id=0)
                    if i % 2:
                        own.delete_group(db, f"g{i % 3}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(db,)) for db in ("p", "q", "p", "q")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [e for e in errors if getattr(e, "reason", "") != "GROUP_NOT_FOUND"]
    left = [(db, img.key.group_id) for db in ("p", "q") for img in c.list_images(db)]
    assert left
    for db, group in left:
        assert c.get_image_bytes(db, group, 0)[0]
    assert len(blobs(server.data_dir)) == 1
