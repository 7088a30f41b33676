"""Several models per server and ReindexDatabase, against a real server with two real (tiny) TorchScript models.

Vectors are checked against a fresh registration with the new model, a concurrent writer and
searcher run through a reindex, and the switch, rollback and refusals are pinned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from lookalike.client import BulkItem, ClientError, LookalikeClient
from lookalike.server.app import create_server
from lookalike.server.config import ServerConfig
from tiny_models import picture, write_models


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("models"))


class Server:
    def __init__(self, data: Path, model: str, **options: object) -> None:
        self.running = create_server(ServerConfig(port=0, data_dir=data, model=model, **options))  # type: ignore[arg-type]
        self.address = f"127.0.0.1:{self.running.port}"
        self.client = LookalikeClient(self.address)

    def stop(self) -> None:
        self.client.close()
        self.running.stop(0)


@pytest.fixture
def server(tmp_path: Path, models: dict[str, Path]) -> Iterator[Server]:
    s = Server(tmp_path / "data", f"old={models['old']},new={models['new']}")
    yield s
    s.stop()


def vectors(c: LookalikeClient, db: str) -> dict[tuple[str, int], np.ndarray]:
    out = {}
    for img in c.list_images(db):
        got = c.get_image(db, img.key.group_id, img.key.intra_id, include_vector=True)
        out[(img.key.group_id, img.key.intra_id)] = np.asarray(got.vector.values)
    return out


def embed(c: LookalikeClient, images: list[bytes], model: str) -> np.ndarray:
    from lookalike.v1 import match_service_pb2 as pb
    from lookalike.v1 import types_pb2

    resp = c.match_stub.Embed(pb.EmbedRequest(images=[types_pb2.Image(content=i) for i in images], model=model))
    assert resp.model == model
    return np.asarray([v.values for v in resp.embeddings])


def wait(c: LookalikeClient, name: str) -> object:
    return c.wait_done(name)


# -- several models ----------------------------------------------------------------------------------
def test_databases_are_bound_to_their_model(server: Server) -> None:
    c = server.client
    assert c.create_database("a").dimension == 24  # the default (first) model
    b = c.create_database("b", model="new")
    assert (b.dimension, b.model_name, b.model_loaded) == (16, "new", True)
    c.set_image("a", "x", image=picture(1))
    c.set_image("b", "x", image=picture(1))
    assert embed(c, [picture(1)], "new").shape == (1, 16)
    np.testing.assert_allclose(vectors(c, "b")[("x", 0)], embed(c, [picture(1)], "new")[0], atol=1e-5)
    np.testing.assert_allclose(vectors(c, "a")[("x", 0)], embed(c, [picture(1)], "old")[0], atol=1e-5)
    assert c.search("b", image=picture(1)).hits[0].key.group_id == "x"  # embedded by the database's model
    listed = {m.name: m for m in c.list_models()}
    assert (
        listed["old"].is_default and list(listed["old"].databases) == ["a"] and list(listed["new"].databases) == ["b"]
    )
    assert listed["new"].dimension == 16 and listed["new"].loaded and len(listed["new"].digest) == 64
    assert listed["new"].device == "cpu" and listed["new"].execution  # where and how it runs
    with pytest.raises(ClientError) as err:
        c.create_database("c", model="missing")
    assert (err.value.code, err.value.reason) == ("INVALID_ARGUMENT", "MODEL_NOT_FOUND")
    assert "old" in err.value.message and "new" in err.value.message
    similarity = c.match_stub.Match(__import__("lookalike.v1.match_service_pb2", fromlist=["x"]).MatchRequest(
        image_a={"content": picture(1)}, image_b={"content": picture(2)}, model="new"))  # fmt: skip
    assert similarity.model == "new"


def test_a_database_whose_model_is_not_loaded_is_listed_with_that_state(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    first = Server(tmp_path / "data", f"old={models['old']},new={models['new']}")
    first.client.create_database("kept", model="new")
    first.client.set_image("kept", "x", image=picture(3))
    first.stop()
    second = Server(tmp_path / "data", f"old={models['old']}")
    try:
        (db,) = second.client.list_databases()
        assert (db.name, db.model_loaded, db.model_name) == ("kept", False, "")
        with pytest.raises(ClientError) as err:
            second.client.search("kept", image=picture(3))
        assert err.value.reason == "MODEL_MISMATCH" and "reindex" in err.value.message
        unloaded = [m for m in second.client.list_models() if not m.loaded]
        assert [list(m.databases) for m in unloaded] == [["kept"]] and unloaded[0].dimension == 16
        assert (unloaded[0].device, unloaded[0].execution) == ("", "")  # not running anywhere
    finally:
        second.stop()


# -- reindex -----------------------------------------------------------------------------------------
def test_reindex_from_kept_originals_equals_a_fresh_registration(server: Server) -> None:
    c = server.client
    c.create_database("cat", keep="original")
    c.create_database("fresh", model="new")
    images = {f"g{i}": picture(i) for i in range(40)}
    c.bulk_set("cat", iter(BulkItem(g, image=data, attributes={"title": g}) for g, data in images.items()))
    c.bulk_set("fresh", iter(BulkItem(g, image=data) for g, data in images.items()))
    op = c.reindex_database("cat", "new")
    done = wait(c, op.name)
    r = done.reindex
    assert (r.switched, r.reindexed_count, r.missing_count, r.model) == (True, 40, 0, "new")
    assert r.previous == "cat@previous" and r.sampled_queries == 40 and 0.0 <= r.overlap_at_10 <= 1.0
    now = c.get_database("cat")
    assert (now.dimension, now.model_name, now.image_count, now.keep) == (16, "new", 40, "original")
    got, want = vectors(c, "cat"), vectors(c, "fresh")
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5)
    assert c.get_image("cat", "g3", 0).attributes["title"] == "g3"  # attributes travel
    old = c.get_database("cat@previous")
    assert (old.dimension, old.model_name) == (24, "old")
    assert c.search("cat@previous", image=picture(5)).hits[0].key.group_id == "g5"  # still searchable
    # Roll back and forth: the names swap, nothing is re-embedded.
    r2 = c.rollback_database("cat")
    assert (r2.database.dimension, r2.previous.dimension) == (24, 16)
    c.rollback_database("cat")
    assert c.get_database("cat").dimension == 16
    c.delete_database("cat@previous")
    with pytest.raises(ClientError) as err:
        c.rollback_database("cat")
    assert err.value.reason == "PREVIOUS_NOT_FOUND"


def test_reindex_refusals(server: Server) -> None:
    c = server.client
    c.create_database("r")
    c.set_image("r", "x", image=picture(9))
    with pytest.raises(ClientError) as err:
        c.reindex_database("r", "old")
    assert (err.value.code, err.value.reason) == ("FAILED_PRECONDITION", "REINDEX_SAME_MODEL")
    with pytest.raises(ClientError) as err:
        c.reindex_database("r", "nope")
    assert err.value.reason == "MODEL_NOT_FOUND"
    with pytest.raises(ClientError) as err:
        c.reindex_database("missing", "new")
    assert err.value.reason == "DATABASE_NOT_FOUND"
    with pytest.raises(ClientError) as err:
        c.create_database("x@previous")
    assert err.value.reason == "DATABASE_NAME_INVALID"


def test_images_it_cannot_re_embed_are_listed_and_block_the_switch_unless_allowed(server: Server) -> None:
    c = server.client
    c.create_database("bare", keep="none")
    c.set_image("bare", "img", image=picture(11), attributes={"source": "/nowhere/img.png"})
    c.set_image("bare", "vec", vector=[0.5] * 24)
    done = wait(c, c.reindex_database("bare", "new").name)
    assert done.error.reason == "REINDEX_INCOMPLETE" and "2 images" in done.error.message
    assert c.get_database("bare").dimension == 24  # not switched
    assert [d.name for d in c.list_databases()] == ["bare"]  # the shadow is gone
    done = wait(c, c.reindex_database("bare", "new", allow_missing=True).name)
    r = done.reindex
    assert r.switched and r.missing_count == 2
    assert {(m.key.group_id, m.reason) for m in r.missing} == {("img", "SOURCE_UNREADABLE"), ("vec", "VECTOR_ONLY")}
    assert [m.source for m in r.missing if m.key.group_id == "img"] == ["/nowhere/img.png"]
    assert c.get_database("bare").image_count == 0


def test_writes_and_searches_during_a_reindex_lose_nothing(server: Server) -> None:
    """A writer adds, overwrites and deletes while the reindex runs; a searcher never fails. Afterwards the new
    database holds exactly what the old one was left with, each vector the new model's for its final bytes."""
    c = server.client
    c.create_database("live", keep="original")  # re-embedded from the originals: equal to a fresh embedding
    c.bulk_set("live", iter(BulkItem(f"base{i}", image=picture(1000 + i)) for i in range(400)))
    final: dict[tuple[str, int], bytes] = {(f"base{i}", 0): picture(1000 + i) for i in range(400)}
    stop = threading.Event()
    failures: list[BaseException] = []
    searches = [0]

    def writer() -> None:
        with LookalikeClient(server.address) as w:
            i = 0
            while not stop.is_set():
                try:
                    data = picture(5000 + i)
                    key = (f"w{i % 50}", 0)
                    w.set_image("live", key[0], intra_id=0, image=data)
                    final[key] = data
                    if i % 7 == 3:
                        gone = (f"base{i % 400}", 0)
                        try:
                            w.delete_image("live", *gone)
                        except ClientError as err:
                            if err.reason != "IMAGE_NOT_FOUND":
                                raise
                        final.pop(gone, None)
                    i += 1
                except BaseException as exc:
                    failures.append(exc)
                    return

    def streamer() -> None:  # bulk streams across the switch: a chunk pinned to the old database goes again
        with LookalikeClient(server.address) as w:
            j = 0
            while not stop.is_set():
                try:
                    batch = {(f"s{(j + k) % 90}", 0): picture(9000 + j + k) for k in range(30)}
                    summary = w.bulk_set("live", iter(BulkItem(g, image=d, intra_id=i) for (g, i), d in batch.items()))
                    assert summary.failed_count == 0, summary
                    final.update(batch)
                    j += 30
                except BaseException as exc:
                    failures.append(exc)
                    return

    def searcher() -> None:
        with LookalikeClient(server.address) as s:
            while not stop.is_set():
                try:
                    s.search("live", image=picture(1001), top_k=5)
                    searches[0] += 1
                except BaseException as exc:
                    failures.append(exc)
                    return

    threads = [threading.Thread(target=f) for f in (writer, streamer, searcher)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    op = c.reindex_database("live", "new")
    done = wait(c, op.name)
    time.sleep(0.3)  # writes after the switch go to the new database directly
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures
    assert searches[0] > 0
    assert done.reindex.switched and done.reindex.concurrent_writes > 0, done
    got = vectors(c, "live")
    assert got.keys() == final.keys()
    keys = sorted(final)
    want = np.concatenate([embed(c, [final[k] for k in keys[i : i + 200]], "new") for i in range(0, len(keys), 200)])
    for k, v in zip(keys, want, strict=True):
        np.testing.assert_allclose(got[k], v, atol=1e-5, err_msg=str(k))


def test_a_reindex_cancelled_with_pages_in_flight_leaves_the_old_database_and_can_run_again(server: Server) -> None:
    """Ctrl-C of `lookalike db reindex` cancels the operation while the background process holds pages: the shadow
    goes, the name still serves the old model's vectors, and a second reindex runs to the end."""
    c = server.client
    c.create_database("cat", keep="original")
    c.bulk_set("cat", iter(BulkItem(f"g{i}", image=picture(i)) for i in range(1500)))
    sample = [(f"g{i}", 0) for i in range(0, 1500, 150)]

    def stored() -> list[np.ndarray]:
        return [np.asarray(c.get_image("cat", g, i, include_vector=True).vector.values) for g, i in sample]

    before = stored()
    op = c.reindex_database("cat", "new")
    deadline = time.monotonic() + 120
    while c.get_operation(op.name).progress.completed == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the first page is copied: the next ones are in the background process
    cancelled = c.cancel_operation(op.name)
    done = wait(c, cancelled.name)
    assert done.state == 4, done  # OPERATION_STATE_CANCELLED
    assert 0 < done.progress.completed < 1500  # cancelled part-way, not after the end
    assert sorted(d.name for d in c.list_databases()) == ["cat"]  # the shadow is gone, no cat@previous
    db = c.get_database("cat")
    assert (db.dimension, db.model_name, db.image_count) == (24, "old", 1500)
    for now, then in zip(stored(), before, strict=True):
        np.testing.assert_array_equal(now, then)
    again = wait(c, c.reindex_database("cat", "new").name)
    assert again.reindex.switched and again.reindex.reindexed_count == 1500
    assert c.get_database("cat").dimension == 16
