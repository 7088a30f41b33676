"""Milvus-only behaviour: replicas sharing one Milvus, outages, filter injection, migration both ways."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import unit_vectors
from lookalike.client import ClientError, LookalikeClient
from milvus_server import MilvusLite


def start(data: Path, **options: object) -> object:
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    return create_server(ServerConfig(port=0, data_dir=data, **options))  # type: ignore[arg-type]


def on_milvus(uri: str, data: Path, prefix: str = "rep_", **options: object) -> object:
    return start(data, index="milvus", milvus_uri=uri, milvus_index="FLAT", milvus_prefix=prefix, **options)


@pytest.fixture
def replicas(milvus: MilvusLite, tmp_path: Path) -> Iterator[tuple[LookalikeClient, LookalikeClient]]:
    a, b = on_milvus(milvus.uri, tmp_path / "a"), on_milvus(milvus.uri, tmp_path / "b")
    ca, cb = LookalikeClient(a.address), LookalikeClient(b.address)  # type: ignore[attr-defined]
    yield ca, cb
    for c in (ca, cb):
        c.close()
    for s in (a, b):
        s.stop(0)  # type: ignore[attr-defined]


def keys(hits) -> list[tuple[str, int]]:
    return [(h.key.group_id, h.key.intra_id) for h in hits]


def test_a_write_through_one_replica_is_seen_by_the_other(replicas):
    a, b = replicas
    a.create_database("shared")
    assert "shared" in [d.name for d in b.list_databases()]
    v = unit_vectors(3, 1)
    a.set_image("shared", "sku-1", vector=v[0].tolist(), attributes={"color": "red"})
    b.set_image("shared", "sku-2", vector=v[1].tolist())
    for c in (a, b):  # Strong consistency: the next search anywhere sees every acknowledged write
        assert keys(c.search("shared", vector=v[0].tolist(), top_k=2).hits) == [("sku-1", 0), ("sku-2", 0)]
    a.delete_image("shared", "sku-1", 0)
    assert keys(b.search("shared", vector=v[0].tolist(), top_k=5).hits) == [("sku-2", 0)]  # no stale hit
    b.delete_database("shared")
    with pytest.raises(ClientError) as err:
        a.search("shared", vector=v[0].tolist())
    assert err.value.reason == "DATABASE_NOT_FOUND"


def test_automatic_intra_ids_from_two_replicas_never_collide(replicas):
    a, b = replicas
    a.create_database("ids")
    v = unit_vectors(1, 2)[0].tolist()
    got: dict[str, list[int]] = {"a": [], "b": []}

    def register(name: str, client: LookalikeClient) -> None:
        for _ in range(40):
            got[name].append(client.set_image("ids", "g", vector=v).key.intra_id)
        summary = client.bulk_set("ids", [("g", None, v, f"{name}-{i}") for i in range(40)])
        got[name] += [k.intra_id for k in summary.keys]

    threads = [threading.Thread(target=register, args=(n, c)) for n, c in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = got["a"] + got["b"]
    assert len(every) == 160 and len(set(every)) == 160  # unique across replicas
    assert got["a"] == sorted(got["a"]) and got["b"] == sorted(got["b"])  # increasing within a replica
    assert a.get_database("ids").image_count == 160  # nothing overwritten
    assert sorted(i.key.intra_id for i in b.list_images("ids")) == sorted(every)


QUOTES = ['x" or group_id != "', "a\\", 'q"', "per%cent", "under_score", "new\\nline", "'single'"]


def test_user_strings_never_become_filter_syntax(replicas):
    """Group ids, prefixes, attribute keys and values full of quotes, backslashes and LIKE wildcards."""
    a, _ = replicas
    a.create_database("inject")
    v = unit_vectors(len(QUOTES) + 1, 3)
    for i, text in enumerate(QUOTES):
        a.set_image("inject", text, intra_id=0, vector=v[i].tolist(), attributes={"k": text, text: "v"})
    a.set_image("inject", "zzz", intra_id=0, vector=v[-1].tolist(), attributes={"k": "plain"})
    q = v[0].tolist()
    for text in QUOTES:
        hits = a.search("inject", vector=q, top_k=20, filter={"k": text}).hits
        assert keys(hits) == [(text, 0)], text
        assert keys(a.search("inject", vector=q, top_k=20, filter={text: "v"}).hits) == [(text, 0)], text
        expected = sorted(g for g in [*QUOTES, "zzz"] if g.startswith(text))
        assert sorted(g for g, _ in keys(a.search("inject", vector=q, top_k=20, group_id_prefix=text).hits)) == expected
    assert a.search("inject", vector=q, top_k=20, group_id_prefix="per_").hits == []  # '_' is not a wildcard
    assert a.delete_group("inject", QUOTES[0]) == 1  # deletes that group, not every other one
    assert a.get_database("inject").image_count == len(QUOTES)


def test_an_outage_is_unavailable_naming_the_backend_and_loses_nothing(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    own = MilvusLite(tmp_path / "milvus")
    server = on_milvus(own.uri, tmp_path / "d", milvus_timeout_s=3.0, milvus_token="root:TOKEN-SECRET-42")
    client = LookalikeClient(server.address)  # type: ignore[attr-defined]
    try:
        client.create_database("kept")
        v = unit_vectors(2, 4)
        client.set_image("kept", "before", vector=v[0].tolist())  # acknowledged: must survive the outage
        own.stop()
        for call in (lambda: client.set_image("kept", "during", vector=v[1].tolist()),
                     lambda: client.search("kept", vector=v[0].tolist()),
                     lambda: client.get_database("kept")):  # fmt: skip
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.code == "UNAVAILABLE" and err.value.reason == "MILVUS_UNAVAILABLE"
            assert own.uri in err.value.message and "TOKEN-SECRET" not in err.value.message
        own.start()
        hits = client.search("kept", vector=v[0].tolist(), top_k=5).hits  # back, without a restart of ours
        assert keys(hits) == [("before", 0)]
        client.set_image("kept", "after", vector=v[1].tolist())
        assert client.get_database("kept").image_count == 2
    finally:
        client.close()
        server.stop(0)  # type: ignore[attr-defined]
        own.stop()
    assert not [r for r in caplog.records if "TOKEN-SECRET" in r.getMessage()]


def test_start_up_reads_the_catalog_and_scans_nothing(milvus, tmp_path, monkeypatch):
    from lookalike.server.storage.milvus_store import MilvusStore

    first = on_milvus(milvus.uri, tmp_path / "a", prefix="boot_")
    with LookalikeClient(first.address) as c:  # type: ignore[attr-defined]
        c.create_database("big")
        c.bulk_set("big", [(f"g{i}", None, row.tolist(), "") for i, row in enumerate(unit_vectors(200, 5))])
    first.stop(0)  # type: ignore[attr-defined]
    touched: list[str] = []
    for name in ("query", "scan", "page", "search", "count"):
        real = getattr(MilvusStore, name)

        def spy(self, *a, _n=name, _r=real, **k):
            touched.append(_n)
            return _r(self, *a, **k)

        monkeypatch.setattr(MilvusStore, name, spy)
    second = on_milvus(milvus.uri, tmp_path / "b", prefix="boot_")
    try:
        assert touched == []  # ready without reading any image collection
        with LookalikeClient(second.address) as c:  # type: ignore[attr-defined]
            assert c.get_database("big").image_count == 200
    finally:
        second.stop(0)  # type: ignore[attr-defined]


def state(client: LookalikeClient, name: str) -> dict[tuple[str, int], tuple[dict[str, str], np.ndarray]]:
    out = {}
    for img in client.list_images(name):
        full = client.get_image(name, img.key.group_id, img.key.intra_id, include_vector=True)
        out[(img.key.group_id, img.key.intra_id)] = (dict(full.attributes), np.asarray(full.vector.values))
    return out


def test_export_from_the_built_in_store_imports_into_milvus_and_back(milvus, tmp_path):
    builtin = start(tmp_path / "builtin", export_root=tmp_path)
    on_m = on_milvus(milvus.uri, tmp_path / "m", prefix="mig_", export_root=tmp_path)
    b, m = LookalikeClient(builtin.address), LookalikeClient(on_m.address)  # type: ignore[attr-defined]
    try:
        b.create_database("catalogue")
        v = unit_vectors(150, 6)
        items = [(f"sku-{i % 40}", i, v[i].tolist(), "", {"n": str(i)} if i % 3 else {}) for i in range(150)]
        b.bulk_set("catalogue", items)
        b.delete_image("catalogue", "sku-1", 1)
        original = state(b, "catalogue")
        b.export_database("catalogue", str(tmp_path / "out-1"))
        m.import_database("catalogue", str(tmp_path / "out-1"))
        moved = state(m, "catalogue")
        assert moved.keys() == original.keys() and len(moved) == 149
        for key, (attrs, vec) in original.items():
            assert moved[key][0] == attrs
            np.testing.assert_allclose(moved[key][1], vec, atol=1e-6)
        m.export_database("catalogue", str(tmp_path / "out-2"))
        b.import_database("back", str(tmp_path / "out-2"))
        back = state(b, "back")
        assert back.keys() == original.keys()
        for key, (attrs, vec) in original.items():
            assert back[key][0] == attrs
            np.testing.assert_allclose(back[key][1], vec, atol=1e-6)
        q = v[7].tolist()
        assert keys(m.search("catalogue", vector=q, top_k=10).hits) == keys(b.search("back", vector=q, top_k=10).hits)
    finally:
        b.close()
        m.close()
        builtin.stop(0)  # type: ignore[attr-defined]
        on_m.stop(0)  # type: ignore[attr-defined]


def test_a_replica_started_before_milvus_is_not_ready_until_milvus_answers(tmp_path):
    """Load balancers see NOT_SERVING (gRPC health) and 503 (/healthz) until the backend answers."""
    import grpc
    import requests
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig
    from milvus_server import free_port

    port = free_port()
    config = ServerConfig(port=0, http_port=0, data_dir=tmp_path / "d", index="milvus",
                          milvus_uri=f"http://127.0.0.1:{port}", milvus_index="FLAT")  # fmt: skip
    server = create_server(config, wait=False)
    milvus = None
    try:
        with grpc.insecure_channel(server.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert requests.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=5).status_code == 503
            with LookalikeClient(server.address) as c, pytest.raises(ClientError) as err:
                c.list_databases()
            assert (err.value.code, err.value.reason) == ("UNAVAILABLE", "MILVUS_UNAVAILABLE")
            milvus = MilvusLite(tmp_path / "milvus", port=port)
            server.wait_ready(60)
            assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING  # fmt: skip
            ok = requests.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=5)
            assert ok.status_code == 200 and ok.json() == {"status": "SERVING"}
    finally:
        server.stop(0)
        if milvus is not None:
            milvus.stop()


@pytest.mark.parametrize("metric", ["IP", "COSINE"])
def test_both_milvus_metrics_rank_and_score_by_cosine(milvus, tmp_path, metric):
    server = on_milvus(milvus.uri, tmp_path / "d", prefix=f"metric_{metric.lower()}_", milvus_metric=metric)
    try:
        with LookalikeClient(server.address) as c:  # type: ignore[attr-defined]
            c.create_database("m")
            v = unit_vectors(60, 9)
            c.bulk_set("m", [(f"g{i}", 0, row.tolist(), "") for i, row in enumerate(v)])
            q = unit_vectors(1, 10)[0]
            scores = v.astype(np.float64) @ q
            expected = [(f"g{i}", 0) for i in np.argsort(-scores)[:8]]
            hits = c.search("m", vector=q.tolist(), top_k=8).hits
            assert keys(hits) == expected
            np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:8], atol=1e-5)
    finally:
        server.stop(0)  # type: ignore[attr-defined]


def test_a_client_given_several_replicas_spreads_its_calls(replicas):
    """``ipv4:A,B`` (or ``dns:///`` a headless Service) balances per call, not per connection."""
    a, b = replicas
    a.create_database("spread")
    target = "ipv4:" + ",".join(c.address for c in (a, b))
    v = unit_vectors(1, 11)[0].tolist()
    with LookalikeClient(target) as both:
        for _ in range(40):
            both.set_image("spread", "g", vector=v)
    ids = sorted(i.key.intra_id for i in a.list_images("spread"))
    assert len(ids) == 40 and len(set(ids)) == 40
    blocks = {i // 64 for i in ids}  # each replica hands out automatic ids from its own leased block
    assert len(blocks) == 2, f"all 40 calls went to one replica: ids {ids}"


def test_replicas_sharing_an_images_dir_serve_each_others_kept_images(milvus: MilvusLite, tmp_path: Path) -> None:
    """Kept thumbnails live in the image store every replica shares (--images-dir), not in one replica."""
    from photos import encode, photo

    shared = tmp_path / "images"
    a = on_milvus(milvus.uri, tmp_path / "a", prefix="keep_", images_dir=shared)
    b = on_milvus(milvus.uri, tmp_path / "b", prefix="keep_", images_dir=shared)
    try:
        with LookalikeClient(a.address) as ca, LookalikeClient(b.address) as cb:  # type: ignore[attr-defined]
            assert ca.create_database("kept", keep="original").keep == "original"
            assert cb.get_database("kept").keep == "original"
            sent = encode(photo("rocket"))
            ca.set_image("kept", "sku", image=sent)
            assert cb.get_image_bytes("kept", "sku", 0, "original") == (sent, "image/jpeg")
            thumb, media = cb.get_image_bytes("kept", "sku", 0)
            assert media == "image/jpeg" and thumb == ca.get_image_bytes("kept", "sku", 0)[0]
            assert len(list(shared.glob("??/*"))) == 2
            # Replicas keep no reference counts: a delete leaves the blobs to a sweep, which keeps what any row
            # of any replica names and what was written within its grace period.
            ca.set_image("kept", "other", image=encode(photo("coffee")))
            ca.delete_image("kept", "sku", 0)
            assert len(list(shared.glob("??/*"))) == 4
            assert b.service.sweep_images(grace_s=3600) == 0  # type: ignore[attr-defined]
            assert b.service.sweep_images(grace_s=0) == 2  # type: ignore[attr-defined]
            assert len(list(shared.glob("??/*"))) == 2
            assert cb.get_image_bytes("kept", "other", 0, "original")[0] == encode(photo("coffee"))
    finally:
        for s in (a, b):
            s.stop(0)  # type: ignore[attr-defined]
