"""Recall and latency of a scale run's saved database at several HNSW expansions, over gRPC.

Restarts ``lookalike serve`` on the data directory that ``bench/scale.py`` left (rows and graph
loaded from the snapshot, nothing rebuilt) once per ``--ef``, and measures the same queries as
that run (same seed) against the exact float32 top-10 (computed once, slice by slice): p50/p99
over gRPC, cold (first pass) and warm (second pass), recall@10, resident memory, start-up time (to the
first answer, and to the first answer by the graph, which loads in the background).

    .venv/bin/python bench/scale_ef.py --n 10000000 --work runs/scale10m --ef 400 800 1600 --json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import harness
import numpy as np
from harness import ServeProcess, SlicedClustered


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--ef", type=int, nargs="+", default=[400, 800])
    ap.add_argument("--rerank", type=int, nargs="+", default=[4], help="the server's --hnsw-rerank values")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--per-group", type=int, default=10)
    ap.add_argument("--hnsw-dtype", default="i8")
    args = ap.parse_args()
    from lookalike.client import LookalikeClient

    out = harness.Results(args, show=lambda r: json.dumps(r, indent=1))
    data = SlicedClustered(args.n, args.d)
    queries = data.queries(args.queries)
    truth_file = args.work / f"truth-{args.n}-{args.queries}.npy"
    if truth_file.exists():
        truth = np.load(truth_file)
    else:
        t = time.perf_counter()
        truth = data.truth(queries, 10)
        np.save(truth_file, truth)
        print(f"exact truth in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    for ef, rerank in [(e, r) for e in args.ef for r in args.rerank]:
        flags = ("--model", str(args.work / f"model{args.d}.pt"), "--data-dir", str(args.work / "data"),
                 "--hnsw-threshold", str(args.n), "--hnsw-dtype", args.hnsw_dtype, "--hnsw-expansion-search", str(ef),
                 "--snapshot-interval", "0", "--threads", "2", "--hnsw-rerank", str(rerank))  # fmt: skip
        t0 = time.perf_counter()
        server = ServeProcess(*flags, log=args.work / f"server-ef{ef}-r{rerank}.log", timeout=1800)
        row: dict[str, object] = {"n": args.n, "ef": ef, "rerank": rerank}
        try:
            with LookalikeClient(server.address, timeout=600) as c:
                waited = harness.until_graph(c, "scale", queries[0], t0)
            row["serving_s"], row["first_index"] = round(waited["first_search_s"], 1), waited["first_index"]
            row["graph_in_s"] = round(waited["graph_s"], 1)
            row["index"] = waited["index"]
            for name in ("cold", "warm"):
                row[name] = harness.grpc_searches(server.address, "scale", queries, truth, args.per_group)
            row["rss"] = harness.proc_status(server.pid)
        finally:
            server.stop(timeout=300)
        out.add(row)


if __name__ == "__main__":
    main()
