"""The HNSW tier against exact search on clustered data: recall, deletes and upserts at once, fallbacks."""

from __future__ import annotations

import time

import numpy as np
import pytest
from lookalike.server.core.backends.builtin.catalog import Catalog
from lookalike.server.core.backends.builtin.hnsw import HnswSettings

DIM = 64


def clustered(n: int, seed: int, clusters: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    v = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def wait_ready(db, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.hnsw is not None and db.hnsw.ready:
            return
        time.sleep(0.05)
    raise AssertionError("the HNSW graph was not built in time")


@pytest.mark.parametrize("dtype", ["f16", "bf16", "i8"])
def test_hnsw_recall_deletes_upserts_and_fallbacks(dtype: str):
    catalog = Catalog(DIM, {"name": "t", "digest": "x"}, hnsw=HnswSettings(threshold=5000, dtype=dtype))
    catalog.create("d", storage="f32")  # the exact re-rank is checked to 1e-5
    vecs = clustered(20_000, 1)
    for start in range(0, 20_000, 4000):
        items = [(f"g{i % 997}", i, "", {"half": str(i % 2)}) for i in range(start, start + 4000)]
        catalog.set_images("d", items, vecs[start : start + 4000])
    db = catalog.get("d")
    wait_ready(db)
    assert db.hnsw.dtype == dtype  # the graph stores what the settings say
    queries = clustered(50, 2)
    recalls = []
    for q in queries:
        hits, searched, tier = db.search_tier(q, 10)
        exact = db.index.search(q, 10, db._live[: db.rows], db.rows)[1]
        truth = {(f"g{r % 997}", int(r)) for r in exact.tolist()}  # rows == intra ids here (no churn yet)
        assert tier == "hnsw" and searched == 20_000
        recalls.append(len(truth & {(h.group_id, h.intra_id) for h in hits}) / 10)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores[0], float(vecs[hits[0].intra_id] @ q), rtol=1e-5)  # exact re-rank
    assert np.mean(recalls) >= 0.95, np.mean(recalls)

    q = queries[0]
    top = db.search_tier(q, 1)[0][0]
    catalog.delete_image("d", top.group_id, top.intra_id)  # a delete is reflected at once
    assert (top.group_id, top.intra_id) not in {(h.group_id, h.intra_id) for h in db.search_tier(q, 10)[0]}
    catalog.set_images("d", [("g5", 5, "", None)], q[None])  # an upsert: the new vector answers at once
    hits, _, tier = db.search_tier(q, 3)
    assert tier == "hnsw" and (hits[0].group_id, hits[0].intra_id) == ("g5", 5) and hits[0].score > 0.999
    assert db.search_tier(q, 5, one_per_group=True)[2] == "exact"  # groups stay with the exact scan
    hits, _, tier = db.search_tier(q, 5, where={"half": "1"})  # filters check the graph's candidates
    assert tier == "hnsw" and len(hits) == 5 and all(h.attributes == {"half": "1"} for h in hits)
    hits, _, tier = db.search_tier(q, 5, group_prefix="g1")
    assert tier == "hnsw" and len(hits) == 5 and all(h.group_id.startswith("g1") for h in hits)
    db.compact()  # ids stay, rows move: the graph keeps answering right
    hits, _, tier = db.search_tier(q, 3)
    assert tier == "hnsw" and (hits[0].group_id, hits[0].intra_id) == ("g5", 5)


def test_small_databases_stay_exact():
    catalog = Catalog(DIM, {"name": "t", "digest": "x"}, hnsw=HnswSettings(threshold=5000))
    catalog.create("d", storage="f32")  # the exact re-rank is checked to 1e-5
    catalog.set_images("d", [("g", i, "", None) for i in range(100)], clustered(100, 3))
    db = catalog.get("d")
    assert db.hnsw is None and db.search_tier(clustered(1, 4)[0], 5)[2] == "exact"
