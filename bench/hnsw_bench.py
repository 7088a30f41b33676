"""HNSW benchmark: the server's HNSW tier (usearch graph, ``ip`` metric) beside FAISS IndexHNSWFlat.

Same clustered, L2-normalised data for both, in one run (default 1M x 384; ``harness.clustered``: n/1000
centres, spread 0.6). Rows (``--json`` prints them as JSON lines, ``--out PATH`` writes them to PATH):

- ``build`` rows: build seconds, vectors/s, memory (the index's own bytes and the process's
  resident-memory growth while building).
- ``lookalike_hnsw``: the server's tier as searches run it: ``Database.search_tier`` on a
  database whose graph was built by the server's background build (native usearch graph, ``ip``, the
  server's degree (24) and expansion_add (128) unless ``--connectivity`` says otherwise; ``--dtype``
  the server's graph storage (i8) by default, or f32/f16/bf16), candidates
  ``rerank_factor`` x k re-ranked exactly, hits with ids.
- ``graph_<dtype>``: the same graph searched directly (no re-rank, no bookkeeping); batch 1000
  on the native pool. ``lookalike_hnsw``'s batch 1000 column is ``HnswIndex.search_many`` (graph
  search + live mask + exact re-rank per query, one native call for all queries).
- ``faiss_hnsw_flat``: FAISS IndexHNSWFlat (M 16, efConstruction 128, inner product, f32).

For each expansion (``--ef``: usearch expansion_search = FAISS efSearch): QPS at batch 1
(one query per call, one thread) with p50/p99 latency, QPS at batch 1000 (``--threads``
threads), recall@10 against the exact float32 top-10 (native kernel). Ratios at the end:
the fastest setting of each method reaching ``--target-recall`` and QPS ratios between them.

    flock /tmp/lookalike-bench.lock .venv/bin/python bench/hnsw_bench.py --n 1000000 --d 384 --json
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import harness
import numpy as np
from harness import Results, recall
from lookalike.server import defaults

from lookalike import native


def batch1(search: Any, queries: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """QPS, p50 ms, p99 ms and ids for one query per call."""
    for q in queries[:20]:
        search(q)
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        ids.append(search(q))
        times.append(time.perf_counter() - t)
    return len(queries) / sum(times), *harness.p50_p99(times), np.stack(ids)


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128, 200])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--target-recall", type=float, default=0.97)
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument(
        "--dtype",
        nargs="+",
        default=[defaults.HNSW_DTYPE],
        help="graph storage(s) of our tier: f16, f32, bf16, i8 (default: the server's)",
    )
    ap.add_argument("--rerank", type=int, nargs="+", default=[4], help="candidates per result re-scored (our tier)")
    ap.add_argument("--connectivity", type=int, default=0, help="our graph's degree (--hnsw-connectivity; 0: default)")
    ap.add_argument("--faiss-m", type=int, default=16, help="FAISS IndexHNSWFlat's M (the issue's peer: 16)")
    args = ap.parse_args()
    out = Results(args, show=harness.key_values, with_load=True)
    n, d, k = args.n, args.d, args.k
    native.set_threads(args.threads)
    out.say(f"n={n} d={d} k={k} threads={args.threads} cpus={os.cpu_count()} load {os.getloadavg()}")

    x, queries = harness.clustered_set(n, d, args.queries)
    _, truth = native.topk(x, queries, k)

    for dtype in args.dtype:
        ours(out, args, x, queries, truth, dtype)
    faiss_rows(out, args, x, queries, truth)
    summary(out, args)


def ours(
    out: Results, args: argparse.Namespace, x: np.ndarray, queries: np.ndarray, truth: np.ndarray, dtype: str
) -> None:
    """The server's tier: a Database whose graph the server's background build makes."""
    from lookalike.server.core.backends.builtin.commands import SetImages, SetItem
    from lookalike.server.core.backends.builtin.database import Database
    from lookalike.server.core.backends.builtin.hnsw import HnswSettings
    from lookalike.server.core.backends.builtin.search import graph_rows

    n, d = x.shape
    k = truth.shape[1]
    degree = {"connectivity": args.connectivity} if args.connectivity else {}
    settings = HnswSettings(threshold=1, dtype=dtype, **degree)
    db = Database("bench", d, storage="f16")
    db.hnsw_settings = settings
    base = harness.rss()
    step = 100_000
    for a in range(0, n, step):  # the vectors as the server stores them (f16 rows + bookkeeping)
        items = tuple(SetItem(f"g{i}", 0, i, "", None) for i in range(a, min(n, a + step)))
        db.apply_set(SetImages("bench", items, x[a : a + len(items)], 0.0), a // step + 1)
        if a == 0:
            db.hnsw = None  # build once over everything below, not from the first slice
            settings_off = HnswSettings(threshold=0)
            db.hnsw_settings = settings_off
    stored = harness.rss() - base
    db.hnsw_settings = settings
    t0 = time.perf_counter()
    with db.lock:
        db._maybe_build_graph()
    graph = db.hnsw
    assert graph is not None, "no graph was started"
    while not graph.ready:
        time.sleep(0.05)
    build_s = time.perf_counter() - t0
    index = graph.graph  # lookalike._native.HnswGraph
    out.add(method="lookalike_hnsw", kind="build", n=n, d=d, dtype=dtype, connectivity=settings.connectivity,
            expansion_add=settings.expansion_add, build_s=round(build_s, 1), build_rate=round(n / build_s),
            index_bytes=int(index.memory_usage), kernel=index.kernel, rss_growth=harness.rss() - base,
            exact_store_rss=stored)  # fmt: skip

    for ef, rerank in [(ef, r) for ef in args.ef for r in args.rerank]:
        settings = HnswSettings(threshold=1, expansion_search=ef, dtype=dtype, rerank_factor=rerank, **degree)
        graph.configure(settings)

        def tier(q: np.ndarray) -> np.ndarray:
            hits = db.search_tier(q, k)[0]
            return np.array([int(h.group_id[1:]) for h in hits] + [-1] * (k - len(hits)))

        qps, p50, p99, ids = batch1(tier, queries)
        # the same tier for many queries at once: one native call, the queries spread over the pool
        with db.lock:
            rows_n = db._intra.n
            live, ids_flat, pinned = db._live[:rows_n], db._ids_flat[:rows_n], db.index.pin()
        want = max(k * settings.rerank_factor, k + 16)
        t = time.perf_counter()
        _, rows = graph.search_many(queries, k, want, graph_rows(pinned), rows_n, ids_flat, live, threads=args.threads)
        b_s = time.perf_counter() - t
        out.add(method="lookalike_hnsw", dtype=dtype, n=n, d=d, k=k, ef=ef, rerank=settings.rerank_factor,
                qps_b1=round(qps), p50_ms=round(p50, 3), p99_ms=round(p99, 3), qps_b1000=round(len(queries) / b_s),
                recall_at_10=round(recall(ids, truth), 4), recall_b1000=round(recall(rows, truth), 4))  # fmt: skip

        if rerank != args.rerank[0]:
            continue  # the graph alone does not depend on the re-rank

        def raw(q: np.ndarray) -> np.ndarray:
            return index.search(q, k)

        qps, p50, p99, ids = batch1(raw, queries)
        t = time.perf_counter()
        batch = index.search_many(queries, k, threads=args.threads)
        b_s = time.perf_counter() - t
        out.add(method=f"graph_{dtype}", n=n, d=d, k=k, ef=ef, qps_b1=round(qps), p50_ms=round(p50, 3),
                p99_ms=round(p99, 3), qps_b1000=round(len(queries) / b_s), recall_at_10=round(recall(ids, truth), 4),
                recall_b1000=round(recall(batch, truth), 4))  # fmt: skip

    db.hnsw = None  # free the graph before the next one


def faiss_rows(out: Results, args: argparse.Namespace, x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    n, d = x.shape
    k = truth.shape[1]
    if not args.skip_faiss:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        base = harness.rss()
        t0 = time.perf_counter()
        fi = faiss.IndexHNSWFlat(d, args.faiss_m, faiss.METRIC_INNER_PRODUCT)
        fi.hnsw.efConstruction = 128
        fi.add(x)
        build_s = time.perf_counter() - t0
        out.add(method="faiss_hnsw_flat", kind="build", n=n, d=d, dtype="f32", connectivity=args.faiss_m,
                expansion_add=128, build_s=round(build_s, 1), build_rate=round(n / build_s),
                index_bytes=int(faiss.serialize_index(fi).size), rss_growth=harness.rss() - base)  # fmt: skip
        for ef in args.ef:
            fi.hnsw.efSearch = ef
            faiss.omp_set_num_threads(1)

            def fs(q: np.ndarray) -> np.ndarray:
                return fi.search(q[None], k)[1][0]

            qps, p50, p99, ids = batch1(fs, queries)
            faiss.omp_set_num_threads(args.threads)
            t = time.perf_counter()
            _, bids = fi.search(queries, k)
            b_s = time.perf_counter() - t
            out.add(method="faiss_hnsw_flat", n=n, d=d, k=k, ef=ef, qps_b1=round(qps), p50_ms=round(p50, 3),
                    p99_ms=round(p99, 3), qps_b1000=round(len(queries) / b_s),
                    recall_at_10=round(recall(ids, truth), 4), recall_b1000=round(recall(bids, truth), 4))  # fmt: skip


def summary(out: Results, args: argparse.Namespace) -> None:
    best: dict[str, dict[str, Any]] = {}
    for r in out.rows:
        name = r["method"] + (f"_{r['dtype']}" if r["method"] == "lookalike_hnsw" else "")
        if "qps_b1" in r and r["recall_at_10"] >= args.target_recall:
            if name not in best or r["qps_b1"] > best[name]["qps_b1"]:
                best[name] = r
    for m, r in best.items():
        out.say(f"fastest {m} at recall@10 >= {args.target_recall}: ef {r['ef']}, {r['qps_b1']} QPS at batch 1, "
                f"p50 {r['p50_ms']} ms, recall {r['recall_at_10']}")  # fmt: skip
    f = best.get("faiss_hnsw_flat")
    for m in best:
        if f and m != "faiss_hnsw_flat":
            out.say(f"{m} / faiss_hnsw_flat QPS at batch 1 (each at its fastest ef reaching the target): "
                    f"{best[m]['qps_b1'] / f['qps_b1']:.2f}x")  # fmt: skip
    out.say(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
