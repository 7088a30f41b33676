"""Scale run: N x d synthetic clustered vectors registered through the server's vector API.

Starts ``lookalike serve`` as its own process (a small d-dimensional embedder exported here:
the vectors are sent, not images), creates a database with ``--storage`` (default i8: int8 rows
+ per-vector scale, float32 copy on disk for the exact re-rank), registers N vectors over gRPC
BulkSetImages streams (groups of ``--per-group`` images), snapshots every ``--snapshot-every``
images (the float32 copy then leaves process memory for its memory-mapped files), waits for
the HNSW graph (``--hnsw-threshold N``: built once after registration), and reports:
registration time and rate, graph build time, the server's resident memory (VmRSS, and its
anonymous / file-backed parts), disk used, Search latency over gRPC (p50/p99) and recall@10
against an exact float32 top-10 computed here chunk by chunk (the vectors are regenerated
from the seed, never held whole). Per-image costs and the arithmetic for other N and d follow.

    flock /tmp/lookalike-bench.lock .venv/bin/python bench/scale.py --n 2000000 --d 384 --work runs/scale
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness
from harness import ServeProcess, SlicedClustered, proc_status

SLICE = SlicedClustered.SLICE


def export_model(path: Path, d: int) -> Path:
    import torch
    from lookalike.trainer.export import export_embedder
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, d, 5, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x)).mean(dim=(2, 3))

    if not path.exists():
        export_embedder(Tiny(), path, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, model_name=f"scale-{d}")
    return path


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--storage", default="i8")
    ap.add_argument("--hnsw-dtype", default="i8")
    ap.add_argument("--ef", type=int, default=200, help="the server's --hnsw-expansion-search")
    ap.add_argument("--per-group", type=int, default=10)
    ap.add_argument("--snapshot-every", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--streams", type=int, default=2, help="concurrent BulkSetImages streams")
    ap.add_argument("--threads", type=int, default=2, help="the server's --threads")
    ap.add_argument("--work", type=Path, default=Path("runs/scale"))
    ap.add_argument("--min-free-gib", type=float, default=3.0, help="stop registering below this MemAvailable")
    args = ap.parse_args()
    from lookalike.client import LookalikeClient

    out = harness.Results(args, show=lambda r: json.dumps(r, indent=1))
    n, d, k = args.n, args.d, 10
    work = args.work
    data_dir = work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    model = export_model(work / f"model{d}.pt", d)
    flags = ("--model", str(model), "--data-dir", str(data_dir), "--hnsw-threshold", str(n),
             "--hnsw-dtype", args.hnsw_dtype, "--hnsw-expansion-search", str(args.ef),
             "--snapshot-interval", "0", "--threads", str(args.threads),
             "--stream-idle-s", "3600")  # a long run may be paused (SIGSTOP) to free the machine  # fmt: skip
    server = ServeProcess(*flags, log=work / "server.log", timeout=120)
    row: dict[str, Any] = {"n": n, "d": d, "storage": args.storage, "hnsw_dtype": args.hnsw_dtype,
                           "per_group": args.per_group, "load_start": os.getloadavg()[0]}  # fmt: skip
    try:
        address = server.address
        row["rss_idle"] = proc_status(server.pid)
        data = SlicedClustered(n, d)
        with LookalikeClient(address) as c:
            c.create_database("scale", storage=args.storage)
        t0 = time.perf_counter()
        snap_s = 0.0
        done = 0
        stopped = ""

        def send(i: int) -> int:
            x = data.slice(i)
            base = i * SLICE
            pg = args.per_group
            with LookalikeClient(address) as c:
                items = ((f"g{(base + j) // pg}", (base + j) % pg, x[j].tolist(), "") for j in range(len(x)))
                return c.bulk_set("scale", items).succeeded_count

        with ThreadPoolExecutor(args.streams) as pool:
            step = args.streams
            for first in range(0, data.slices(), step):
                done += sum(pool.map(send, range(first, min(data.slices(), first + step))))
                if done // args.snapshot_every != (done - step * SLICE) // args.snapshot_every or done >= n:
                    s0 = time.perf_counter()
                    with LookalikeClient(address) as c:
                        c.snapshot_database("scale")
                    snap_s += time.perf_counter() - s0
                    st = proc_status(server.pid)
                    print(f"{done} registered in {time.perf_counter() - t0:.0f}s, server RSS {st['VmRSS'] >> 20} MiB "
                          f"(anon {st['RssAnon'] >> 20}), MemAvailable {harness.mem_available() >> 30} GiB, "
                          f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)  # fmt: skip
                if harness.mem_available() < args.min_free_gib * (1 << 30):
                    stopped = f"stopped at {done}: MemAvailable below {args.min_free_gib} GiB"
                    break
        reg_s = time.perf_counter() - t0
        row.update(registered=done, register_s=round(reg_s, 1), register_per_s=round(done / reg_s),
                   snapshot_s_total=round(snap_s, 1), stopped=stopped)  # fmt: skip
        row["rss_registered"] = proc_status(server.pid)
        queries = data.queries(args.queries)
        # The graph: started when the size reached the threshold; wait until searches say "hnsw".
        t1 = time.perf_counter()
        with LookalikeClient(address) as c:
            while True:
                r = c.search("scale", vector=queries[0].tolist(), top_k=k)
                if r.index == "hnsw":
                    break
                if time.perf_counter() - t1 > 4 * 3600 or server.proc.poll() is not None:
                    raise RuntimeError("no HNSW graph")
                time.sleep(2)
        row["build_wait_s"] = round(time.perf_counter() - t1, 1)
        built = [line for line in server.log_lines() if "HNSW graph of" in line and "ready" in line]
        row["build_log"] = built[-1].strip() if built else ""
        with LookalikeClient(address) as c:
            s0 = time.perf_counter()
            c.snapshot_database("scale")  # saves the graph too
            row["final_snapshot_s"] = round(time.perf_counter() - s0, 1)
        row["rss_built"] = proc_status(server.pid)
        row["disk_bytes"] = harness.du(data_dir)
        row["disk_snapshots"] = harness.du(data_dir / "snapshots")
        if done < n:
            data = SlicedClustered(done, d)  # truth over what was registered
        truth = data.truth(queries, k)
        row["search"] = {"ef": args.ef, **harness.grpc_searches(address, "scale", queries, truth, args.per_group,
                                                                warmup=20)}  # fmt: skip
        row["load_end"] = os.getloadavg()[0]
        st = row["rss_built"]
        row["per_image"] = {
            "rss_bytes": round((st["VmRSS"] - row["rss_idle"]["VmRSS"]) / done, 1),
            "anon_bytes": round((st["RssAnon"] - row["rss_idle"]["RssAnon"]) / done, 1),
            "disk_bytes": round(row["disk_bytes"] / done, 1),
        }
        out.add(row)
        # Restart: the snapshot's rows are loaded, then the graph (in the background); it must not be rebuilt.
        server.stop(timeout=600)
        t2 = time.perf_counter()
        server = ServeProcess(*flags, log=work / "server-restart.log", timeout=1800)
        with LookalikeClient(server.address) as c:
            waited = harness.until_graph(c, "scale", queries[0], t2)
        log_lines = server.log_lines()
        rebuilt = [line for line in log_lines if "HNSW graph of" in line and ("ready" in line or "rebuil" in line)]
        restart = {"serving_s": round(waited["first_search_s"], 1), "first_search_index": waited["first_index"],
                   "graph_in_s": round(waited["graph_s"], 1),
                   "graph_rebuilt": bool(rebuilt), "rss": proc_status(server.pid)}  # fmt: skip
        # Steady state after the restart: the same searches (cold pages first, then warm), then memory.
        for name in ("search_cold", "search_warm"):
            restart[name] = harness.grpc_searches(server.address, "scale", queries, truth, args.per_group)
        restart["rss_after_search"] = proc_status(server.pid)
        out.add(restart=restart)
    finally:
        server.stop(timeout=120)


if __name__ == "__main__":
    main()
