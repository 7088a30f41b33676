"""FindDuplicates end to end through a real server, and what it costs the calls served beside it.

Registers ``--n`` vectors of the default model's dimension (clustered, with planted near-copies)
into a fresh server, then runs FindDuplicates and reports: the job's time and useful GFLOP/s,
planted copies found, and the latency of a write and a search made one after another while the
job runs against the same calls on the idle server (p50, p99, max; the job's block length is
``--block-seconds``). Ratios are what to read: the machine is shared.

    .venv/bin/python bench/dedup_server.py --n 100000 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def catalogue(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """~n/50 clusters of related vectors (cosine ~0.6 inside), and 1% planted near-copies (cosine > 0.99)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 1.2 * rng.standard_normal((n, d)).astype(np.float32)
    copies = max(1, n // 100)
    src = rng.choice(n - copies, copies, replace=False)
    dst = np.arange(n - copies, n)
    x[dst] = x[src] + 0.05 * np.linalg.norm(x[src], axis=1, keepdims=True) / np.sqrt(d) * rng.standard_normal(
        (copies, d)
    ).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), list(zip(src.tolist(), dst.tolist(), strict=True))


def latencies(client: Any, x: np.ndarray, until: Any, least: int = 20) -> list[float]:
    """Seconds of one SetImage + one Search, repeated while ``until()`` is false (at least ``least`` times)."""
    out: list[float] = []
    i = 0
    while not until() or len(out) < least:
        t0 = time.perf_counter()
        client.set_image("bench", "probe", intra_id=0, vector=x[i % len(x)].tolist())
        client.search("bench", vector=x[(i * 7) % len(x)].tolist(), top_k=10)
        out.append(time.perf_counter() - t0)
        i += 1
        if until() and len(out) >= least:
            break
    return out


def stats(v: list[float]) -> dict[str, float]:
    a = np.asarray(v) * 1000
    return {"p50_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "count": len(v)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--block-seconds", type=float, default=0.25)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from lookalike.client import BulkItem, LookalikeClient
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    from lookalike import native

    data = Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    running = create_server(ServerConfig(port=0, data_dir=data, hnsw_threshold=0,
                                         dedup_block_seconds=args.block_seconds, fsync="never"))  # fmt: skip
    out: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "simd": native.simd_level(),
                           "threads": native.get_threads(), "n": args.n, "threshold": args.threshold,
                           "block_seconds": args.block_seconds}  # fmt: skip
    try:
        with LookalikeClient(running.address, timeout=600) as c:
            d = c.list_models()[0].dimension
            x, planted = catalogue(args.n, d)
            c.create_database("bench")
            t0 = time.perf_counter()
            for a in range(0, args.n, 1000):
                c.bulk_set("bench", [BulkItem(f"g{i}", vector=x[i].tolist()) for i in range(a, min(a + 1000, args.n))])
            out["register_s"] = time.perf_counter() - t0
            out["idle"] = stats(latencies(c, x, lambda: True, least=50))
            t0 = time.perf_counter()
            op = c.find_duplicates("bench", threshold=args.threshold, method="exact")
            busy = latencies(c, x, lambda: c.get_operation(op.name).done)
            op = c.wait_done(op.name, interval=0.2)
            out["job_wall_s"] = time.perf_counter() - t0
            out["during_job"] = stats(busy)
            r = op.find_duplicates
            clusters = list(c.duplicate_clusters(op.name, page_size=1000))
            found = {frozenset(int(m.key.group_id[1:]) for m in cl.members) for cl in clusters}
            hit = sum(any({a, b} <= f for f in found) for a, b in planted)
            flops = float(args.n) * args.n * d  # the upper triangle: n^2/2 pairs, 2d flops each
            out.update(job_s=r.seconds, pairs=r.pair_count, clusters=r.cluster_count,
                       planted=len(planted), planted_found=hit, gflops=flops / r.seconds / 1e9,
                       p99_ratio=out["during_job"]["p99_ms"] / out["idle"]["p99_ms"])  # fmt: skip
    finally:
        running.stop(0)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{args.n} x {d} on {out['cpu']} ({out['simd']}, {out['threads']} threads); register {out['register_s']:.1f}s"
    )
    print(f"FindDuplicates: {out['job_s']:.1f}s ({out['gflops']:.0f} GFLOP/s useful), {out['pairs']} pairs, "
          f"{out['clusters']} clusters; planted copies found {out['planted_found']}/{out['planted']}")  # fmt: skip
    for k in ("idle", "during_job"):
        s = out[k]
        print(f"  write+search {k:10s} p50 {s['p50_ms']:.1f} ms  p99 {s['p99_ms']:.1f} ms  max {s['max_ms']:.1f} ms "
              f"({s['count']} calls)")  # fmt: skip
    print(f"  p99 during / idle: {out['p99_ratio']:.2f}x (blocks of {args.block_seconds}s)")


if __name__ == "__main__":
    main()
