"""The two index backends side by side: built-in store vs Milvus, same data, same run.

For each backend (the built-in store: exact scan, and its HNSW tier once built; Milvus with
a FLAT and an HNSW collection) this measures, through the backend interface the server uses
(``IndexBackend.set_images`` / ``search_tier``, in this process, no gRPC):

- insert rate (images/s, batches of ``--batch`` as bulk registration sends them),
- search latency p50 / p99 over ``--queries`` single queries (k = ``--k``), medians of ``--runs``,
- recall@k against an exact float64 numpy ground truth.

Data: clustered unit vectors (``harness.clustered``: n/1000 centres, spread 0.6, as ``hnsw_bench.py``). Milvus is
``milvus-lite server`` on loopback unless ``--milvus-uri`` names a real one; milvus-lite is a
single-process Python server meant for tests, so its numbers say nothing about a Milvus cluster.

    .venv/bin/python bench/backends.py [--n 100000] [--d 384] [--queries 200] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import Results, recall

MODEL = {"name": "bench", "digest": "bench", "dimension": 0, "preprocessing": {}}


def insert(backend: Any, name: str, x: np.ndarray, batch: int) -> float:
    started = time.perf_counter()
    for a in range(0, len(x), batch):
        b = min(len(x), a + batch)
        backend.set_images(name, [(f"g{i // 4}", i % 4, "", None) for i in range(a, b)], x[a:b])
    return len(x) / (time.perf_counter() - started)


def search(backend: Any, name: str, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray, str]:
    db = backend.get(name)
    lat, ids, tier = [], [], ""
    for q in queries:
        t = time.perf_counter()
        hits, _, tier = db.search_tier(q, k, with_attributes=False)
        lat.append(time.perf_counter() - t)
        ids.append([int(h.group_id[1:]) * 4 + h.intra_id for h in hits] + [-1] * (k - len(hits)))
    return lat, np.asarray(ids), tier


def measure(out: Results, label: str, backend: Any, name: str, x: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            args: argparse.Namespace, wait_tier: str = "", runs: int = 0) -> None:  # fmt: skip
    backend.create(name)
    rate = insert(backend, name, x, args.batch)
    if wait_tier:  # the built-in HNSW graph is built in the background after the threshold
        deadline = time.monotonic() + 3600
        while search(backend, name, queries[:1], args.k)[2] != wait_tier and time.monotonic() < deadline:
            time.sleep(1)
    p50s, p99s, recalls, tier = [], [], [], ""
    for _ in range(runs or args.runs):
        lat, ids, tier = search(backend, name, queries, args.k)
        p50, p99 = harness.p50_p99(lat)
        p50s.append(p50)
        p99s.append(p99)
        recalls.append(recall(ids, truth))
    out.add(backend=label, tier=tier, n=len(x), d=x.shape[1], k=args.k, queries=len(queries), insert_per_s=round(rate),
            p50_ms=round(float(np.median(p50s)), 3), p99_ms=round(float(np.median(p99s)), 3),
            recall_at_k=round(float(np.median(recalls)), 4))  # fmt: skip
    backend.delete(name)


def main() -> None:
    parser = harness.arguments(__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--milvus-queries",
        type=int,
        default=20,
        help="queries (first N) and one run for Milvus: milvus-lite takes seconds per search at 100k",
    )
    parser.add_argument("--milvus-uri", default=None, help="a running Milvus (default: start milvus-lite here)")
    args = parser.parse_args()
    from lookalike.server.core.backends.builtin.catalog import Catalog
    from lookalike.server.core.backends.builtin.hnsw import HnswSettings
    from lookalike.server.core.backends.milvus.catalog import MilvusCatalog, MilvusIndexSettings
    from lookalike.server.storage.milvus_store import MilvusStore

    out = Results(args, show=harness.key_values, with_load=True)
    x, queries = harness.clustered_set(args.n, args.d, args.queries)
    truth = harness.exact_topk(x, queries, args.k)
    model = {**MODEL, "dimension": args.d}

    exact = Catalog(args.d, model, hnsw=HnswSettings(threshold=0))
    measure(out, "builtin", exact, "exact", x, queries, truth, args)
    graph = Catalog(args.d, model, hnsw=HnswSettings(threshold=min(args.n, 100_000)))
    measure(out, "builtin", graph, "hnsw", x, queries, truth, args, wait_tier="hnsw")

    with tempfile.TemporaryDirectory() as tmp:
        lite = None
        uri = args.milvus_uri
        if uri is None:
            lite = harness.from_tests("milvus_server").MilvusLite(Path(tmp) / "milvus")  # the tests' own server
            uri = lite.uri
        try:
            for index in ("FLAT", "HNSW"):
                store = MilvusStore(uri, prefix="bench_", timeout_s=600)
                milvus = MilvusCatalog(args.d, model, store, index=MilvusIndexSettings(index_type=index))
                milvus.recover()
                m, label = args.milvus_queries, "milvus-lite" if lite else "milvus"
                measure(out, label, milvus, index.lower(), x, queries[:m], truth[:m], args, runs=1)
                milvus.close()
        finally:
            if lite is not None:
                lite.stop()
    base = next(r for r in out.rows if r["tier"] == "exact")
    for r in out.rows:
        rate, p50 = r["insert_per_s"] / base["insert_per_s"], r["p50_ms"] / base["p50_ms"]
        out.say(f"{r['backend']:12s} {r['tier']:12s} insert {r['insert_per_s']:>8}/s ({rate:.2f}x built-in exact)  "
                f"p50 {r['p50_ms']:8.2f} ms ({p50:.1f}x)  p99 {r['p99_ms']:8.2f} ms  recall@{args.k} "
                f"{r['recall_at_k']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
