"""Recall and latency of a scale run's saved database at several HNSW expansions, over gRPC.

Restarts ``lookalike serve`` on the data directory that ``bench/scale.py`` left (rows and graph
loaded from the snapshot, nothing rebuilt) once per ``--ef``, and measures the same queries as
that run (same seed) against the exact float32 top-10 (computed once, slice by slice): p50/p99
over gRPC, cold (first pass) and warm (second pass), recall@10, resident memory, start-up time.

    .venv/bin/python bench/scale_ef.py --n 10000000 --work runs/scale10m --ef 400 800 1600 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import REPO, Data, exact_truth, free_port, status, stop_server, timed_searches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--ef", type=int, nargs="+", default=[400, 800])
    ap.add_argument("--rerank", type=int, nargs="+", default=[4], help="the server's --hnsw-rerank values")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--per-group", type=int, default=10)
    ap.add_argument("--hnsw-dtype", default="i8")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from lookalike.client import LookalikeClient

    data = Data(args.n, args.d)
    queries = data.queries(args.queries)
    truth_file = args.work / f"truth-{args.n}-{args.queries}.npy"
    if truth_file.exists():
        truth = np.load(truth_file)
    else:
        t = time.perf_counter()
        truth = exact_truth(data, queries, 10)
        np.save(truth_file, truth)
        print(f"exact truth in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    for ef, rerank in [(e, r) for e in args.ef for r in args.rerank]:
        port = free_port()
        cmd = [str(REPO / ".venv/bin/lookalike"), "serve", "--model", str(args.work / f"model{args.d}.pt"),
               "--data-dir", str(args.work / "data"), "--port", str(port), "--hnsw-threshold", str(args.n),
               "--hnsw-dtype", args.hnsw_dtype, "--hnsw-expansion-search", str(ef), "--snapshot-interval", "0",
               "--threads", "2", "--hnsw-rerank", str(rerank)]  # fmt: skip
        log = open(args.work / f"server-ef{ef}-r{rerank}.log", "w")
        t0 = time.perf_counter()
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        address = f"127.0.0.1:{port}"
        row: dict[str, object] = {"n": args.n, "ef": ef, "rerank": rerank}
        try:
            while True:
                try:
                    with LookalikeClient(address, timeout=600) as c:
                        r = c.search("scale", vector=queries[0].tolist(), top_k=10)
                    break
                except Exception:
                    if time.perf_counter() - t0 > 1800 or server.poll() is not None:
                        raise
                    time.sleep(0.5)
            row["serving_s"] = round(time.perf_counter() - t0, 1)
            row["index"] = r.index
            for name in ("cold", "warm"):
                row[name] = timed_searches(address, queries, truth, args.per_group)
            row["rss"] = status(server.pid)
        finally:
            stop_server(server, 300)
        print(json.dumps(row) if args.json else json.dumps(row, indent=1), flush=True)


if __name__ == "__main__":
    main()
