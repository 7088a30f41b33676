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

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lookalike import native

REPO = Path(__file__).resolve().parent.parent
SLICE = 50_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Data:
    """The clustered vectors, regenerated slice by slice from the seed (slice i is always the same)."""

    def __init__(self, n: int, d: int, seed: int = 0) -> None:
        self.n, self.d, self.seed = n, d, seed
        self.centres = np.random.default_rng(seed).standard_normal((max(16, n // 1000), d), np.float32)

    def slice(self, i: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, i))
        rows = min(SLICE, self.n - i * SLICE)
        x = self.centres[rng.integers(0, len(self.centres), rows)] + 0.6 * rng.standard_normal(
            (rows, self.d), np.float32
        )
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def slices(self) -> int:
        return -(-self.n // SLICE)

    def queries(self, m: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, 10**9))
        x = self.centres[rng.integers(0, len(self.centres), m)] + 0.6 * rng.standard_normal((m, self.d), np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_truth(data: Data, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact float32 top-k ids over all N, slice by slice."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for i in range(data.slices()):
        s, ids = native.topk(data.slice(i), queries, k)
        s2, i2 = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids + i * SLICE], 1)
        order = np.argsort(-s2, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s2, order, 1), np.take_along_axis(i2, order, 1)
    return best_i


def timed_searches(address: str, queries: np.ndarray, truth: np.ndarray, per_group: int, warmup: int = 0) -> dict:
    """Top-10 Search by vector over gRPC for every query: p50/p99 ms, recall@10 against ``truth``, the tier."""
    from lookalike.client import LookalikeClient

    k = truth.shape[1]
    lat, got = [], []
    with LookalikeClient(address, timeout=600) as c:
        for q in queries[:warmup]:
            c.search("scale", vector=q.tolist(), top_k=k)
        for q in queries:
            s0 = time.perf_counter()
            r = c.search("scale", vector=q.tolist(), top_k=k)
            lat.append(1000 * (time.perf_counter() - s0))
            got.append([int(h.key.group_id[1:]) * per_group + h.key.intra_id for h in r.hits])
    rec = float(np.mean([len(set(g) & set(t.tolist())) / k for g, t in zip(got, truth, strict=True)]))
    lat.sort()
    return {"p50_ms": round(statistics.median(lat), 3), "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 3),
            "recall_at_10": round(rec, 4), "index": r.index}  # fmt: skip


def stop_server(server: subprocess.Popen, timeout: float) -> None:
    """SIGINT (a clean shutdown, final snapshot included), then a kill after ``timeout``."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()


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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from lookalike.client import LookalikeClient

    n, d, k = args.n, args.d, 10
    work = args.work
    data_dir = work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    model = export_model(work / f"model{d}.pt", d)
    port = free_port()
    log = open(work / "server.log", "w")
    cmd = [str(REPO / ".venv/bin/lookalike"), "serve", "--model", str(model), "--data-dir", str(data_dir),
           "--port", str(port), "--hnsw-threshold", str(n), "--hnsw-dtype", args.hnsw_dtype,
           "--hnsw-expansion-search", str(args.ef),
           "--snapshot-interval", "0", "--threads", str(args.threads),
           "--stream-idle-s", "3600"]  # a long run may be paused (SIGSTOP) to free the machine  # fmt: skip
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    rows: dict[str, Any] = {"n": n, "d": d, "storage": args.storage, "hnsw_dtype": args.hnsw_dtype,
                            "per_group": args.per_group, "load_start": os.getloadavg()[0]}  # fmt: skip
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with LookalikeClient(address) as c:
                    c.list_databases()
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        rows["rss_idle"] = status(server.pid)
        data = Data(n, d)
        with LookalikeClient(address) as c:
            c.create_database("scale", storage=args.storage)
        t0 = time.perf_counter()
        snap_s = 0.0
        done = 0
        stopped = ""
        from concurrent.futures import ThreadPoolExecutor

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
                    st = status(server.pid)
                    print(f"{done} registered in {time.perf_counter() - t0:.0f}s, server RSS {st['VmRSS'] >> 20} MiB "
                          f"(anon {st['RssAnon'] >> 20}), MemAvailable {mem_available() >> 30} GiB, "
                          f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)  # fmt: skip
                if mem_available() < args.min_free_gib * (1 << 30):
                    stopped = f"stopped at {done}: MemAvailable below {args.min_free_gib} GiB"
                    break
        reg_s = time.perf_counter() - t0
        rows.update(registered=done, register_s=round(reg_s, 1), register_per_s=round(done / reg_s),
                    snapshot_s_total=round(snap_s, 1), stopped=stopped)  # fmt: skip
        rows["rss_registered"] = status(server.pid)
        queries = data.queries(args.queries)
        # The graph: started when the size reached the threshold; wait until searches say "hnsw".
        t1 = time.perf_counter()
        with LookalikeClient(address) as c:
            while True:
                r = c.search("scale", vector=queries[0].tolist(), top_k=k)
                if r.index == "hnsw":
                    break
                if time.perf_counter() - t1 > 4 * 3600 or server.poll() is not None:
                    raise RuntimeError("no HNSW graph")
                time.sleep(2)
        rows["build_wait_s"] = round(time.perf_counter() - t1, 1)
        built = [line for line in open(work / "server.log") if "HNSW graph of" in line and "ready" in line]
        rows["build_log"] = built[-1].strip() if built else ""
        with LookalikeClient(address) as c:
            s0 = time.perf_counter()
            c.snapshot_database("scale")  # saves the graph too
            rows["final_snapshot_s"] = round(time.perf_counter() - s0, 1)
        rows["rss_built"] = status(server.pid)
        rows["disk_bytes"] = du(data_dir)
        rows["disk_snapshots"] = du(data_dir / "snapshots")
        if done < n:
            data = Data(done, d)  # truth over what was registered
        truth = exact_truth(data, queries, k)
        rows["search"] = {"ef": args.ef, **timed_searches(address, queries, truth, args.per_group, warmup=20)}
        rows["load_end"] = os.getloadavg()[0]
        st = rows["rss_built"]
        rows["per_image"] = {
            "rss_bytes": round((st["VmRSS"] - rows["rss_idle"]["VmRSS"]) / done, 1),
            "anon_bytes": round((st["RssAnon"] - rows["rss_idle"]["RssAnon"]) / done, 1),
            "disk_bytes": round(rows["disk_bytes"] / done, 1),
        }
        print(json.dumps(rows) if args.json else json.dumps(rows, indent=1), flush=True)
        # Restart: the snapshot (rows + graph) is loaded; the graph must answer without a rebuild.
        server.send_signal(signal.SIGINT)
        server.wait(timeout=600)
        log2 = open(work / "server-restart.log", "w")
        t2 = time.perf_counter()
        server = subprocess.Popen(cmd, stdout=log2, stderr=subprocess.STDOUT)
        while True:
            try:
                with LookalikeClient(address) as c:
                    r = c.search("scale", vector=queries[0].tolist(), top_k=k)
                break
            except Exception:
                if time.perf_counter() - t2 > 1800 or server.poll() is not None:
                    raise
                time.sleep(0.2)
        rebuilt = [line for line in open(work / "server-restart.log") if "HNSW graph of" in line]
        rows["restart"] = {"serving_s": round(time.perf_counter() - t2, 1), "first_search_index": r.index,
                           "graph_rebuilt": bool(rebuilt), "rss": status(server.pid)}  # fmt: skip
        # Steady state after the restart: the same searches (cold pages first, then warm), then memory.
        for name in ("search_cold", "search_warm"):
            rows["restart"][name] = timed_searches(address, queries, truth, args.per_group)
        rows["restart"]["rss_after_search"] = status(server.pid)
        print(json.dumps({"restart": rows["restart"]}), flush=True)
    finally:
        stop_server(server, 120)


if __name__ == "__main__":
    main()
