"""Attribute filters through the filter index (``filters.py``) against a naive Python reference.

Filtered answers must equal a scan of a dict model over random sets, upserts, deletes, group
deletes, clears, compactions and a snapshot reload, for one and several ``where`` keys, keys and
values no row has, with a group prefix and one-per-group; on both paths (the rows a filter keeps
scored alone, or the kernel's scan with the mask) and on the HNSW tier. A filtered search must
not hold the database lock while it works: a writer finishes while one is stuck mid-filter.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from lookalike.server.core.backends.builtin import search as search_module
from lookalike.server.core.backends.builtin.catalog import Catalog
from lookalike.server.core.backends.builtin.hnsw import HnswSettings
from lookalike.server.core.backends.builtin.persistence import Persistence

DIM = 8
MODEL = {"name": "test", "digest": "x"}
COLORS = [f"c{i}" for i in range(5)]
SHAPES = ["round", "square", "flat"]

Key = tuple[str, int]


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def random_attrs(rng: np.random.Generator, serial: int) -> dict[str, str] | None:
    if rng.random() < 0.15:
        return None  # rows without attributes
    a = {"lookalike.sha256": f"{serial:064x}"}  # unique per write, like the image digest
    if rng.random() < 0.9:
        a["color"] = COLORS[int(rng.integers(0, len(COLORS)))]
    if rng.random() < 0.7:
        a["shape"] = SHAPES[int(rng.integers(0, len(SHAPES)))]
    return a


Model = dict[Key, tuple[np.ndarray, dict[str, str]]]


def naive(
    model: Model,
    q: np.ndarray,
    k: int,
    where: dict[str, str],
    group_prefix: str = "",
    one_per_group: bool = False,
    exclude: Key | None = None,
) -> tuple[list[Key], int]:
    """The filtered top-k by a scan of the model: (keys best first, images that passed the filter)."""
    passing = [(key, v) for key, (v, a) in model.items()
               if all(a.get(k2) == v2 for k2, v2 in where.items()) and key[0].startswith(group_prefix)
               and key != exclude]  # fmt: skip
    ranked = sorted(passing, key=lambda kv: -float(kv[1] @ q))
    out: list[Key] = []
    seen: set[str] = set()
    for key, _ in ranked:
        if one_per_group and key[0] in seen:
            continue
        seen.add(key[0])
        out.append(key)
        if len(out) == k:
            break
    return out, len(passing)


def keys(hits: list) -> list[Key]:
    return [(h.group_id, h.intra_id) for h in hits]


def filters(model: Model, rng: np.random.Generator) -> list[dict]:
    """Searches to check: one key, two keys, a missing key, a missing value, a digest, a prefix, groups."""
    digest = next((a["lookalike.sha256"] for _, a in model.values() if "lookalike.sha256" in a), "none")
    some = list(model)[int(rng.integers(0, len(model)))] if model else None
    return [
        {"where": {"color": "c1"}},
        {"where": {"color": "c2", "shape": "square"}},
        {"where": {"color": "c3", "shape": "flat"}, "one_per_group": True},
        {"where": {"nokey": "x"}},
        {"where": {"color": "c9"}},
        {"where": {"lookalike.sha256": digest}},
        {"where": {"shape": "round"}, "group_prefix": "g1"},
        {"where": {"color": "c4"}, "exclude": some},
        {"group_prefix": "g2", "one_per_group": True},
    ]


def check(db, model: Model, rng: np.random.Generator, k: int = 15) -> None:
    q = unit(rng)
    for kwargs in filters(model, rng):
        hits, searched, _ = db.search_tier(q, k, **kwargs)
        want, passing = naive(model, q, k, **{"where": {}, **kwargs})
        assert keys(hits) == want, kwargs
        assert searched == passing, kwargs
        for h in hits:  # the attributes come back with the hits, the current ones
            assert (h.attributes or {}) == model[(h.group_id, h.intra_id)][1]


class Store:
    """A catalog database (in memory, or on ``data_dir``) and the dict model it should equal."""

    def __init__(self, data_dir: Path | None = None, chunk_rows: int = 256) -> None:
        self.data_dir = data_dir
        self.catalog = self._open()
        self.catalog.create("t")
        from lookalike.server.core.backends.builtin.database import Database

        old = self.catalog._dbs["t"]  # small chunks: masks and scores cross chunk boundaries
        db = self.catalog._dbs["t"] = Database("t", DIM, model=old.model, chunk_rows=chunk_rows)
        db.incarnation = db.applied_seq = old.incarnation
        self.model: Model = {}
        self.serial = 0

    def _open(self) -> Catalog:
        if self.data_dir is None:
            return Catalog(DIM, MODEL)
        catalog = Catalog(DIM, MODEL, Persistence(self.data_dir, fsync="never"))
        catalog.recover()
        return catalog

    @property
    def db(self):
        return self.catalog.get("t")

    def step(self, rng: np.random.Generator) -> None:
        r = rng.random()
        if self.model and r < 0.2:
            key = list(self.model)[int(rng.integers(0, len(self.model)))]
            self.catalog.delete_image("t", *key)
            del self.model[key]
        elif self.model and r < 0.22:
            group = list(self.model)[int(rng.integers(0, len(self.model)))][0]
            self.catalog.delete_group("t", group)
            self.model = {key: v for key, v in self.model.items() if key[0] != group}
        else:  # a batch of sets, upserts among them (a key already there)
            batch = []
            for _ in range(int(rng.integers(1, 6))):
                key = (f"g{int(rng.integers(0, 40))}", int(rng.integers(0, 12)))
                self.serial += 1
                batch.append((key, unit(rng), random_attrs(rng, self.serial)))
            self.catalog.set_images("t", [(g, i, "", a) for (g, i), _, a in batch], np.stack([v for _, v, _ in batch]))
            for key, v, a in batch:
                self.model[key] = (v, a or {})

    def clear(self) -> None:
        self.catalog.clear("t")
        self.model = {}

    def reopen(self) -> None:
        self.catalog.checkpoint()
        self.catalog.close(snapshot=False)
        self.catalog = self._open()


@pytest.fixture(params=["scan", "subset"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every filter on one path: the kernel's scan with the mask, or the kept rows scored alone."""
    if request.param == "scan":
        monkeypatch.setattr(search_module, "SUBSET_ROWS", 0)
    else:
        monkeypatch.setattr(search_module, "SUBSET_SHARE", 1)
    return request.param


def test_filters_equal_a_scan_through_churn_clear_and_compaction(path: str):
    rng = np.random.default_rng(7)
    s = Store()
    for _ in range(150):
        s.step(rng)
    check(s.db, s.model, rng)  # the first filters build the columns of rows already there
    assert set(s.db._filters.columns) == {"color", "shape", "lookalike.sha256", "nokey"}  # only keys asked for
    compactions = 0
    for round_ in range(12):
        for _ in range(120):
            s.step(rng)
        check(s.db, s.model, rng)  # columns kept current by the writes
        if round_ == 5:
            s.clear()
            check(s.db, s.model, rng)
        if s.db.dead_rows:
            compactions += s.db.compact() > 0
            check(s.db, s.model, rng)  # rows renumbered
    assert compactions >= 5


def test_filters_after_a_snapshot_and_reload(tmp_path: Path, path: str):
    rng = np.random.default_rng(8)
    s = Store(tmp_path)
    for _ in range(600):
        s.step(rng)
    check(s.db, s.model, rng)
    s.reopen()  # a fresh database from the snapshot: columns built anew on first use
    assert not s.db._filters.columns
    check(s.db, s.model, rng)
    for _ in range(200):  # writes logged after the snapshot, replayed at the next start
        s.step(rng)
    s.catalog.close(snapshot=False)
    s.catalog = s._open()
    check(s.db, s.model, rng)
    for _ in range(200):
        s.step(rng)
    check(s.db, s.model, rng)
    s.catalog.close(snapshot=False)


def clustered(n: int, dim: int, seed: int, clusters: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    v = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_filters_on_the_hnsw_tier():
    """A filter keeping a share of the rows is answered from the graph's candidates (only passing,
    live rows, exact scores, the recall of the unfiltered tier); a narrow one by its rows alone."""
    dim, n = 32, 8000
    catalog = Catalog(dim, MODEL, hnsw=HnswSettings(threshold=4000))
    catalog.create("d", storage="f32")
    vecs = clustered(n, dim, 1)
    attrs = [{"color": f"c{i % 10}", "half": str(i % 2), "lookalike.sha256": f"{i:064x}"} for i in range(n)]
    for a in range(0, n, 2000):
        catalog.set_images("d", [(f"g{i % 50}", i, "", attrs[i]) for i in range(a, a + 2000)], vecs[a : a + 2000])
    db = catalog.get("d")
    deadline = time.monotonic() + 120
    while not (db.hnsw is not None and db.hnsw.ready):
        assert time.monotonic() < deadline, "the HNSW graph was not built in time"
        time.sleep(0.05)
    model = {(f"g{i % 50}", i): (vecs[i], attrs[i]) for i in range(n)}
    for i in range(0, n, 7):  # deletes after the graph was built: never returned
        catalog.delete_image("d", f"g{i % 50}", i)
        del model[(f"g{i % 50}", i)]
    queries = clustered(40, dim, 2)
    recalls = []
    for q in queries:
        for where in ({"color": "c3"}, {"half": "1"}, {"color": "c4", "half": "0"}):
            hits, searched, tier = db.search_tier(q, 10, where=where)
            want, passing = naive(model, q, 10, where)
            assert tier == "hnsw" and searched == passing
            got = [(h.group_id, h.intra_id) for h in hits]
            assert len(got) == 10 and all(all(model[key][1][k] == v for k, v in where.items()) for key in got)
            for h in hits:  # exact scores, best first
                np.testing.assert_allclose(h.score, float(model[(h.group_id, h.intra_id)][0] @ q), rtol=1e-5)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            recalls.append(len(set(got) & set(want)) / 10)
        best = max(model, key=lambda key: float(model[key][0] @ q))
        digest = model[best][1]["lookalike.sha256"]  # one row: scored alone, exactly
        hits, searched, tier = db.search_tier(q, 10, where={"lookalike.sha256": digest})
        assert tier == "exact" and keys(hits) == naive(model, q, 10, {"lookalike.sha256": digest})[0]
        hits, _, tier = db.search_tier(q, 5, where={"color": "c1"}, one_per_group=True)
        assert tier == "exact" and keys(hits) == naive(model, q, 5, {"color": "c1"}, one_per_group=True)[0]
    assert np.mean(recalls) >= 0.95, np.mean(recalls)
    # more candidates than FILTER_CANDIDATES would take: the exact scan answers, exactly
    hits, _, tier = db.search_tier(queries[0], 1000, where={"color": "c3"})
    assert tier == "exact" and keys(hits) == naive(model, queries[0], 1000, {"color": "c3"})[0]


class StuckAttributes(dict):
    """The attribute store, made slow for one thread: its first read there waits until released."""

    def __init__(self, data: dict, thread_name: str) -> None:
        super().__init__(data)
        self.thread_name = thread_name
        self.entered = threading.Event()
        self.release = threading.Event()

    def _maybe_wait(self) -> None:
        if threading.current_thread().name == self.thread_name and not self.entered.is_set():
            self.entered.set()
            self.release.wait(20)

    def get(self, *args):
        self._maybe_wait()
        return super().get(*args)

    def items(self):
        self._maybe_wait()
        return super().items()


def test_a_slow_filtered_search_does_not_block_writers():
    """A filtered search stuck reading attributes (the first filter on a key reads every row's)
    holds no lock: sets, upserts and deletes finish meanwhile, and its answer is then right."""
    rng = np.random.default_rng(9)
    s = Store()
    for _ in range(300):
        s.step(rng)
    stuck = StuckAttributes(s.db._attrs, "filtered-search")
    s.db._attrs = stuck
    q = unit(rng)
    out: list = []
    searcher = threading.Thread(target=lambda: out.append(s.db.search_tier(q, 10, where={"color": "c1"})),
                                name="filtered-search")  # fmt: skip
    searcher.start()
    try:
        assert stuck.entered.wait(10), "the search never read the attributes"
        writer = threading.Thread(target=lambda: [s.step(rng) for _ in range(30)])
        writer.start()
        writer.join(10)
        assert not writer.is_alive(), "a writer waited for a filtered search"
    finally:
        stuck.release.set()
        searcher.join(20)
    hits, searched, _ = out[0]
    want, passing = naive(s.model, q, 10, {"color": "c1"})
    assert keys(hits) == want and searched == passing  # the writes included
    check(s.db, s.model, rng)
