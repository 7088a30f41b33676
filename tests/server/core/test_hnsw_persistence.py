"""The HNSW graph is saved with the snapshots and loaded at start-up instead of being rebuilt.

After a restart the graph read from the snapshot is the one that answers (no graph is built),
with the deletes and upserts logged after the snapshot replayed into it, and the results equal
those before the restart. It loads on a thread: start-up does not wait for it, the exact tier
answers meanwhile, writes made meanwhile reach it, and a snapshot taken meanwhile waits for it
and saves it. A graph that does not match (ahead of the surviving log, or damaged) is rebuilt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from lookalike.server.core.backends.builtin import hnsw, search
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


@dataclass
class Reads:
    """Every graph start-up loads from a snapshot file, in order; ``gate`` holds their file reads while clear."""

    graphs: Reads = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int) -> HnswIndex:
        return self.graphs[i]


@pytest.fixture
def graphs_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    reads = Reads()
    reads.gate.set()
    loading = HnswIndex.loading

    def spy(cls: type[HnswIndex], dimension, settings, seq, read, name) -> HnswIndex:
        def held():
            assert reads.gate.wait(60)
            return read()

        graph = loading(dimension, settings, seq, held, name)
        reads.graphs.append(graph)
        return graph

    monkeypatch.setattr(HnswIndex, "loading", classmethod(spy))
    yield reads
    reads.gate.set()  # a test that failed with the gate shut leaves no thread waiting


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


def test_graph_loaded_at_start_up_with_later_writes_replayed(tmp_path: Path, graphs_read: Reads):
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
    assert graphs_read[0].wait_settled(60)
    assert db.hnsw is graphs_read[0] and db.hnsw.ready  # the saved graph answers, nothing was built
    assert results(db, queries) == before
    assert db.hnsw is graphs_read[0]
    assert len(db.hnsw) == db.size  # replayed into the graph: deleted key gone, new keys in
    catalog.close(snapshot=False)


def test_a_graph_ahead_of_the_log_or_damaged_is_rebuilt(
    tmp_path: Path, graphs_read: Reads, caplog: pytest.LogCaptureFixture
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
    graphs_read.graphs.clear()
    caplog.clear()
    catalog = open_catalog(tmp_path)  # the damage is reported, the graph rebuilt, the database served
    db = catalog.get("d")
    assert len(graphs_read) == 1 and not graphs_read[0].wait_settled(60)  # the damaged file gave no graph
    assert any("HNSW graph of 'd' is unreadable" in r.getMessage() for r in caplog.records)
    assert db.hnsw is not None and db.hnsw is not graphs_read[0]  # a new one is being built
    wait_ready(db)
    catalog.close(snapshot=False)


@pytest.mark.parametrize("under_lock", [4096, 0])  # 0: every kept write goes in before the lock is taken
def test_start_up_does_not_wait_for_the_graph_and_what_is_written_meanwhile_reaches_it(
    tmp_path: Path, graphs_read: Reads, under_lock: int, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(hnsw, "PENDING_UNDER_LOCK", under_lock)
    catalog, vecs = build_and_snapshot(tmp_path)
    catalog.close(snapshot=False)
    queries = clustered(30, 4)

    graphs_read.gate.clear()  # the graph file cannot be read until the gate opens
    catalog = open_catalog(tmp_path)  # returns: start-up does not wait for the graph
    db = catalog.get("d")
    assert len(graphs_read) == 1 and db.hnsw is graphs_read[0] and not db.hnsw.ready
    hits, _, tier = db.search_tier(queries[0], 10)
    assert tier == "exact" and len(hits) == 10  # the exact tier answers meanwhile
    top = hits[0]
    catalog.delete_image("d", top.group_id, top.intra_id)
    catalog.set_images("d", [("new", i, "", None) for i in range(3)], queries[1:4])
    catalog.set_images("d", [("g7", 7, "", None)], queries[4][None])  # an upsert of a row the file holds
    exact = [[(h.group_id, h.intra_id) for h in db.search_tier(q, 10)[0]] for q in queries]
    checkpoint = threading.Thread(target=catalog.checkpoint)
    checkpoint.start()
    checkpoint.join(0.5)
    assert checkpoint.is_alive()  # a snapshot waits for the graph: one without it would mean a rebuild next time
    assert get_manifest(catalog.persistence.local, MANIFEST)["databases"]["d"]["meta"]["applied_seq"] < db.applied_seq

    applied, wrote = hnsw._apply, []

    def apply_then_write(index, batch):
        applied(index, batch)
        if under_lock == 0 and batch and not wrote:  # one write while the kept ones go in unlocked
            wrote.append(catalog.set_images("d", [("late", 0, "", None)], queries[5][None]))

    monkeypatch.setattr(hnsw, "_apply", apply_then_write)
    graphs_read.gate.set()
    assert db.hnsw.wait_settled(60)
    checkpoint.join(60)
    assert not checkpoint.is_alive()
    assert db.hnsw is graphs_read[0] and len(db.hnsw) == db.size  # deleted key out, new keys in, nothing built
    got = results(db, queries)
    assert got[0][0][:2] != (top.group_id, top.intra_id) and (top.group_id, top.intra_id) not in {h[:2] for h in got[0]}
    assert [g[0][:2] for g in got[1:5]] == [("new", 0), ("new", 1), ("new", 2), ("g7", 7)]
    assert (got[5][0][:2] == ("late", 0)) == (under_lock == 0)  # the write made during the unlocked part is in
    recall = np.mean([len({h[:2] for h in a} & set(b)) / 10 for a, b in zip(got, exact, strict=True)])
    assert recall >= 0.95
    entry = get_manifest(catalog.persistence.local, MANIFEST)["databases"]["d"]
    assert entry["hnsw"]["seq"] == db.applied_seq  # the checkpoint saved the graph with the writes made meanwhile
    catalog.close(snapshot=False)

    catalog = open_catalog(tmp_path)  # and the next start loads that graph: no rebuild, the same answers
    db = catalog.get("d")
    assert len(graphs_read) == 2 and graphs_read[1].wait_settled(60) and db.hnsw is graphs_read[1]
    assert results(db, queries) == got
    catalog.close(snapshot=False)


def test_a_graph_of_another_storage_is_checked_once_loaded_and_rebuilt(
    tmp_path: Path, graphs_read: Reads, caplog: pytest.LogCaptureFixture
):
    catalog, _ = build_and_snapshot(tmp_path)
    catalog.close(snapshot=False)
    other = "bf16" if SETTINGS.dtype != "bf16" else "f16"
    caplog.set_level(logging.WARNING)
    catalog = Catalog(DIM, MODEL, Persistence(tmp_path), hnsw=HnswSettings(threshold=5000, dtype=other))
    catalog.recover()
    db = catalog.get("d")
    assert graphs_read[0].wait_settled(60)  # it loaded; only its file says what it stores
    assert db.hnsw is not graphs_read[0]
    assert any(f"the settings say {other}" in r.getMessage() for r in caplog.records)
    wait_ready(db)
    assert db.hnsw.dtype == other
    catalog.close(snapshot=False)


def test_close_waits_for_a_graph_still_loading(tmp_path: Path, graphs_read: Reads):
    """Ctrl-C right after a start: exiting while the native load runs aborted the process (std::terminate)."""
    catalog, _ = build_and_snapshot(tmp_path)
    catalog.close(snapshot=False)
    graphs_read.gate.clear()
    catalog = open_catalog(tmp_path)
    closing = threading.Thread(target=catalog.close, kwargs={"snapshot": True})
    closing.start()
    closing.join(0.5)
    assert closing.is_alive()  # a clean database writes no graph, yet close still waits for the load
    graphs_read.gate.set()
    closing.join(60)
    assert not closing.is_alive() and graphs_read[0].ready


@dataclass
class BuildSteps:
    """The rows each step of a background graph build added; the second step is held in the graph until
    ``held`` is set (``entered`` says it is there)."""

    steps: list[int] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def build_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[BuildSteps]:
    monkeypatch.setattr(search, "BUILD_STEP", 2000)
    seen = BuildSteps()
    add = HnswIndex.add

    def spy(self, ids, vectors, seq=None, threads=1):
        if threading.current_thread().name.startswith("hnsw-"):  # the build's own thread
            seen.steps.append(len(ids))
            if len(seen.steps) == 2:
                seen.entered.set()
                assert seen.held.wait(60)
        return add(self, ids, vectors, seq, threads)

    monkeypatch.setattr(HnswIndex, "add", spy)
    yield seen
    seen.held.set()


def test_dropping_a_database_stops_its_graph_build(tmp_path: Path, build_steps: BuildSteps):
    """A graph still being built for a dropped database held its rows and the kernel's threads until the end."""
    catalog = open_catalog(tmp_path)
    catalog.create("d", storage="f16")
    catalog.set_images("d", [(f"g{i % 97}", i, "", None) for i in range(12_000)], clustered(12_000, 1))
    graph = catalog.get("d").hnsw
    assert build_steps.entered.wait(60)
    catalog.delete("d")
    closing = threading.Thread(target=catalog.close, kwargs={"snapshot": False})
    closing.start()
    closing.join(0.5)
    assert closing.is_alive()  # a dropped database's build is still in native code: Ctrl-C now must wait too
    build_steps.held.set()
    closing.join(60)
    assert not closing.is_alive()
    assert build_steps.steps == [2000, 2000] and not graph.ready  # 4 of its 6 steps never ran


def test_close_stops_a_graph_being_built(tmp_path: Path, build_steps: BuildSteps, monkeypatch: pytest.MonkeyPatch):
    """Ctrl-C while a graph is built: close stops the build at its next step and waits for the step in native
    code (exiting under it aborted the process); the half-built graph is not saved, and the next start builds."""
    steps, held, entered = build_steps.steps, build_steps.held, build_steps.entered
    catalog = open_catalog(tmp_path)
    catalog.create("d", storage="f16")
    catalog.set_images("d", [(f"g{i % 97}", i, "", None) for i in range(12_000)], clustered(12_000, 1))
    graph = catalog.get("d").hnsw
    assert entered.wait(60)
    closing = threading.Thread(target=catalog.close, kwargs={"snapshot": True})
    closing.start()
    closing.join(0.5)
    assert closing.is_alive()  # the step in native code is waited for
    held.set()
    closing.join(60)
    assert not closing.is_alive()
    assert steps == [2000, 2000] and not graph.ready  # stopped after the step it was in: 4 of 6 steps left
    assert not get_manifest(catalog.persistence.local, MANIFEST)["databases"]["d"].get("hnsw")
    monkeypatch.undo()  # the build of the next start runs unheld
    catalog = open_catalog(tmp_path)
    wait_ready(catalog.get("d"))  # built again at start-up
    assert len(catalog.get("d").hnsw) == 12_000
    catalog.close(snapshot=False)


def test_a_graph_loading_for_a_dropped_database_ends_without_a_warning(
    tmp_path: Path, graphs_read: Reads, caplog: pytest.LogCaptureFixture
):
    """Dropped while its graph loads, and its files deleted by the next checkpoint: the load then fails, which
    is no damage to report (it said "unreadable ... rebuilt", of a database that no longer exists)."""
    catalog, _ = build_and_snapshot(tmp_path)
    catalog.close(snapshot=False)
    graphs_read.gate.clear()
    catalog = open_catalog(tmp_path)
    caplog.set_level(logging.INFO)
    catalog.delete("d")
    catalog.checkpoint()  # the dropped database's files go
    graphs_read.gate.set()
    assert not graphs_read[0].wait_settled(60)
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "HNSW graph of 'd'" in r.getMessage()]
    assert said == [(logging.INFO, "the HNSW graph of 'd' stopped loading: the database was dropped")], said
    catalog.close(snapshot=False)
