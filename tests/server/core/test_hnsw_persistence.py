"""The HNSW graph is saved with the snapshots and loaded at start-up instead of being rebuilt.

After a restart the graph read from the snapshot is the one that answers, at once (no graph is
built), with the deletes and upserts logged after the snapshot replayed into it, and the results
equal those before the restart. A graph that does not match (ahead of the surviving log, or
damaged) is rebuilt instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from lookalike.server.core.backends.builtin.catalog import Catalog
from lookalike.server.core.backends.builtin.hnsw import HnswIndex, HnswSettings
from lookalike.server.core.backends.builtin.persistence import MANIFEST, Persistence
from lookalike.server.storage.segments import get_manifest, put_manifest

DIM = 64
MODEL = {"name": "t", "digest": "x"}
SETTINGS = HnswSettings(threshold=5000)


def clustered(n: int, seed: int, clusters: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    v = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def wait_ready(db, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.hnsw is not None and db.hnsw.ready:
            return
        time.sleep(0.05)
    raise AssertionError("the HNSW graph was not built in time")


@pytest.fixture
def graphs_read(monkeypatch: pytest.MonkeyPatch) -> list[HnswIndex]:
    """Every graph start-up reads from a snapshot file, in order."""
    read: list[HnswIndex] = []
    load = HnswIndex.load

    def spy(cls: type[HnswIndex], *args: object, **kwargs: object) -> HnswIndex:
        graph = load(*args, **kwargs)
        read.append(graph)
        return graph

    monkeypatch.setattr(HnswIndex, "load", classmethod(spy))
    return read


def open_catalog(path: Path) -> Catalog:
    catalog = Catalog(DIM, MODEL, Persistence(path), hnsw=SETTINGS)
    catalog.recover()
    return catalog


def results(db, queries: np.ndarray) -> list[list[tuple[str, int, float]]]:
    out = []
    for q in queries:
        hits, _, tier = db.search_tier(q, 10)
        assert tier == "hnsw"
        out.append([(h.group_id, h.intra_id, round(h.score, 6)) for h in hits])
    return out


def build_and_snapshot(path: Path) -> tuple[Catalog, np.ndarray]:
    catalog = open_catalog(path)
    catalog.create("d", storage="f16")
    vecs = clustered(12_000, 1)
    for a in range(0, len(vecs), 4000):
        catalog.set_images("d", [(f"g{i % 97}", i, "", None) for i in range(a, a + 4000)], vecs[a : a + 4000])
    wait_ready(catalog.get("d"))
    catalog.checkpoint()
    entry = get_manifest(catalog.persistence.local, MANIFEST)["databases"]["d"]
    assert entry.get("hnsw"), "the checkpoint saved no graph"
    return catalog, vecs


def test_graph_loaded_at_start_up_with_later_writes_replayed(tmp_path: Path, graphs_read: list[HnswIndex]):
    catalog, vecs = build_and_snapshot(tmp_path)
    queries = clustered(30, 2)
    q = queries[0]
    top = catalog.get("d").search_tier(q, 1)[0][0]
    catalog.delete_image("d", top.group_id, top.intra_id)  # after the snapshot: only in the log
    catalog.set_images("d", [("new", 0, "", None)], q[None])
    catalog.set_images("d", [("g5", 5, "", None)], queries[1][None])  # an upsert
    before = results(catalog.get("d"), queries)
    assert before[0][0][:2] == ("new", 0) and before[1][0][:2] == ("g5", 5)
    assert (top.group_id, top.intra_id) not in {h[:2] for h in before[0]}
    catalog.close(snapshot=False)

    catalog = open_catalog(tmp_path)
    db = catalog.get("d")
    assert len(graphs_read) == 1
    assert db.hnsw is graphs_read[0] and db.hnsw.ready  # the saved graph answers at once, nothing was built
    assert results(db, queries) == before
    assert db.hnsw is graphs_read[0]
    assert len(db.hnsw) == db.size  # replayed into the graph: deleted key gone, new keys in
    catalog.close(snapshot=False)


def test_a_graph_ahead_of_the_log_or_damaged_is_rebuilt(
    tmp_path: Path, graphs_read: list[HnswIndex], caplog: pytest.LogCaptureFixture
):
    catalog, _ = build_and_snapshot(tmp_path)
    queries = clustered(20, 3)
    before = results(catalog.get("d"), queries)
    catalog.close(snapshot=False)

    store = Persistence(tmp_path).local
    manifest = get_manifest(store, MANIFEST)
    manifest["databases"]["d"]["hnsw"]["seq"] = 10**9  # saved after log records that did not survive
    put_manifest(store, MANIFEST, manifest)
    caplog.set_level(logging.WARNING)
    catalog = open_catalog(tmp_path)
    db = catalog.get("d")
    assert len(graphs_read) == 1  # read, then dropped: a new graph is being built
    assert db.hnsw is not None and db.hnsw is not graphs_read[0]
    assert any("dropped (it saw log record 1000000000" in r.getMessage() for r in caplog.records)
    wait_ready(db)
    recall = np.mean([len({h[:2] for h in a} & {h[:2] for h in b}) / 10
                      for a, b in zip(results(catalog.get("d"), queries), before, strict=True)])  # fmt: skip
    assert recall >= 0.95
    catalog.close(snapshot=True)  # this snapshot saves the rebuilt graph

    manifest = get_manifest(store, MANIFEST)
    graph_file = store.path(manifest["databases"]["d"]["hnsw"]["file"]["name"])
    data = bytearray(graph_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph_file.write_bytes(bytes(data))
    graphs_read.clear()
    caplog.clear()
    catalog = open_catalog(tmp_path)  # the damage is reported, the graph rebuilt, the database served
    db = catalog.get("d")
    assert graphs_read == []  # the damaged file gave no graph
    assert any("HNSW graph of 'd' is unreadable" in r.getMessage() for r in caplog.records)
    assert db.hnsw is not None  # a new one is being built
    wait_ready(db)
    catalog.close(snapshot=False)
