"""The native HNSW tier: one call equals the exact re-rank of the graph's own candidates; files
stay the usearch package's format both ways; many queries at once equal one at a time."""

from __future__ import annotations

import time

import numpy as np
import pytest
from lookalike.server.core.backends.builtin.catalog import Catalog
from lookalike.server.core.backends.builtin.hnsw import HnswIndex, HnswSettings
from lookalike.server.core.backends.builtin.search import graph_rows

from lookalike import native

DIM = 48


def clustered(n: int, seed: int, clusters: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    v = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def ready_db(storage: str, dtype: str):
    catalog = Catalog(DIM, {"name": "t", "digest": "x"}, hnsw=HnswSettings(threshold=3000, dtype=dtype))
    catalog.create("d", storage=storage)
    vecs = clustered(6000, 1)
    for a in range(0, len(vecs), 2000):
        catalog.set_images("d", [(f"g{i % 101}", i, "", None) for i in range(a, a + 2000)], vecs[a : a + 2000])
    db = catalog.get("d")
    deadline = time.monotonic() + 120
    while not (db.hnsw is not None and db.hnsw.ready):
        assert time.monotonic() < deadline, "the graph was not built in time"
        time.sleep(0.05)
    for i in range(0, 6000, 9):  # deletes: gone from the graph and the mask
        catalog.delete_image("d", f"g{i % 101}", i)
    catalog.set_images("d", [(f"g{i % 101}", i, "", None) for i in range(1, 400, 9)], clustered(45, 7))  # upserts
    return catalog, db


def reference(db, q: np.ndarray, k: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The graph's own candidates, mapped to rows and the live mask in Python, scored in float64."""
    n = db._intra.n
    ids_flat, live = db._ids_flat[:n], db._live[:n]
    ids = db.hnsw.candidates(q, count)
    pos = np.minimum(np.searchsorted(ids_flat, ids), n - 1)
    rows = pos[(ids_flat[pos] == ids) & (live[pos] != 0)]
    scores = db.index.take(rows).astype(np.float64) @ q.astype(np.float64)
    order = np.lexsort((rows, -scores))[:k]
    return scores[order], rows[order]


@pytest.mark.parametrize(("storage", "dtype"), [("f32", "i8"), ("f16", "bf16"), ("i8", "f16"), ("bf16", "f32")])
def test_the_tier_returns_the_exact_rerank_of_the_graphs_candidates(storage: str, dtype: str):
    catalog, db = ready_db(storage, dtype)
    k = 10
    count = k * db.hnsw.settings.rerank_factor
    queries = clustered(40, 2)
    for q in queries:
        want_scores, want_rows = reference(db, q, k, count)
        hits, _, tier = db.search_tier(q, k)
        assert tier == "hnsw"
        names, groups, intra = db._groups.names, db._group_flat, db._intra
        assert [(h.group_id, h.intra_id) for h in hits] == [
            (names[int(groups[r])], int(intra[int(r)])) for r in want_rows
        ]
        np.testing.assert_allclose([h.score for h in hits], want_scores, rtol=0, atol=1e-5)
        assert all(db._live[r] for r in want_rows)

    n = db._intra.n  # many queries in one call: the same rows as one at a time
    args = graph_rows(db.index.pin()), n, db._ids_flat[:n], db._live[:n]
    scores, rows = db.hnsw.search_many(queries, k, count, *args, threads=2)
    for i, q in enumerate(queries):
        one_scores, one_rows = db.hnsw.search(q, k, count, *args)
        assert rows[i][: len(one_rows)].tolist() == one_rows.tolist()
        assert (rows[i][len(one_rows) :] == -1).all()
        np.testing.assert_array_equal(scores[i][: len(one_rows)], one_scores)
    catalog.close()


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "i8"])
def test_files_are_the_usearch_packages_format_both_ways(dtype: str):
    usearch_index = pytest.importorskip("usearch.index")
    vecs = clustered(3000, 3)
    keys = np.arange(3000, dtype=np.int64) * 5 + 1
    theirs = usearch_index.Index(ndim=DIM, metric="ip", dtype=dtype, connectivity=16, expansion_add=64)
    theirs.add(keys.astype(np.uint64), vecs)
    theirs.remove(int(keys[0]))
    ours = HnswIndex.load(theirs.save(), HnswSettings(dtype=dtype, expansion_search=64), seq=3)
    assert (len(ours), ours.dtype, ours.seq) == (2999, dtype, 3)
    theirs.expansion_search = 64
    queries = clustered(30, 4)
    found = ours.candidates_many(queries, 10)
    same = np.mean(found == np.asarray(theirs.search(queries, 10).keys, np.int64))
    assert same >= (0.9 if dtype == "bf16" else 0.99)  # bf16: their kernel rounds differently, near-ties swap
    assert keys[0] not in found

    ours.add(np.array([7]), vecs[:1])  # saved by us, read by them
    back = usearch_index.Index(ndim=DIM, metric="ip", dtype=dtype)
    back.load(ours.save()[0])
    assert len(back) == 3000 and 7 in back and int(keys[0]) not in back


def test_damaged_bytes_raise_value_error_and_kernels_dispatch():
    with pytest.raises(ValueError):
        HnswIndex.load(np.zeros(4096, np.uint8), HnswSettings(), seq=0)
    graph = native.HnswGraph(DIM, "bf16")
    assert graph.kernel in {"scalar", "avx2", "avx512", "avx512bf16"}
    with pytest.raises(ValueError):
        native.HnswGraph(DIM, "u8")
