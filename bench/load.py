"""Mixed load on a real server: search, match and registration at several concurrency levels.

The server runs as a subprocess (`lookalike serve`) on loopback with its limits; client
threads in this process send a fixed mix (50% search by vector, 20% match of two photos,
20% SetImage with a vector, 10% SetImage with a photo) for ``--seconds`` per level. Reported
per level: requests/s, p50/p99 latency, outcomes by status and reason (zero errors below
the limits, RESOURCE_EXHAUSTED above them), and the server's resident memory sampled every
0.2 s. Bounded in time and count; loopback only.

    .venv/bin/python bench/load.py [--levels 1 4 16 64] [--seconds 30] [--max-inflight 16] [--json]
"""

from __future__ import annotations

import collections
import tempfile
import threading
import time

import harness
import numpy as np


def run_level(address: str, pid: int, clients: int, seconds: float, images: list[bytes], max_requests: int) -> dict:
    from lookalike.client import ClientError, LookalikeClient

    vec_lists = harness.unit_vectors(clients, 256, 1280).tolist()
    latencies: list[float] = []
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()
    rss: list[float] = []
    budget = [max_requests]

    def client(w: int) -> None:
        r = np.random.default_rng(w)
        with LookalikeClient(address, timeout=60) as c:
            n = 0
            while not stop.is_set():
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                pick = r.random()
                t = time.perf_counter()
                try:
                    if pick < 0.5:
                        c.search("load", vector=vec_lists[n % 256], top_k=10)
                    elif pick < 0.7:
                        c.match(images[n % 4], images[(n + 1) % 4])
                    elif pick < 0.9:
                        c.set_image("load", f"c{w}", vector=vec_lists[n % 256])
                    else:
                        c.set_image("load", f"p{w}", image=images[n % 4])
                    outcome = "OK"
                except ClientError as e:
                    outcome = f"{e.code}/{e.reason}"
                elapsed = time.perf_counter() - t
                with lock:
                    outcomes[outcome] += 1
                    if outcome == "OK":
                        latencies.append(elapsed)
                n += 1

    def rss_mb() -> float:
        return harness.rss(pid) / 2**20

    def sample() -> None:
        while not stop.wait(0.2):
            rss.append(rss_mb())

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    sampler = threading.Thread(target=sample)
    t0 = time.perf_counter()
    sampler.start()
    for t in threads:
        t.start()
    deadline = t0 + seconds
    while time.perf_counter() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    sampler.join()
    wall = time.perf_counter() - t0
    p50, p99 = harness.p50_p99(latencies)
    return {
        "clients": clients,
        "requests": sum(outcomes.values()),
        "ok_per_s": len(latencies) / wall,
        "p50_ms": p50,
        "p99_ms": p99,
        "outcomes": dict(outcomes),
        "rss_start_mb": rss[0] if rss else rss_mb(),
        "rss_peak_mb": max(rss) if rss else rss_mb(),
        "rss_end_mb": rss_mb(),
    }


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=30.0, help="per level")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per level, a hard bound")
    ap.add_argument("--max-inflight", type=int, default=16, help="the server's --max-inflight")
    ap.add_argument("--preload", type=int, default=20_000, help="vectors registered before the run")
    args = ap.parse_args()
    from lookalike.client import LookalikeClient

    out = harness.Results(args)
    images = [harness.jpeg(a) for a in harness.photos(("chelsea", "coffee", "astronaut", "rocket"))]
    with (
        tempfile.TemporaryDirectory() as data,
        harness.ServeProcess(
            "--data-dir", data, "--max-inflight", str(args.max_inflight), "--log-level", "warning"
        ) as server,
    ):
        with LookalikeClient(server.address) as c:
            c.create_database("load")
            rng = np.random.default_rng(0)
            for start in range(0, args.preload, 2000):
                v = rng.standard_normal((2000, 1280)).astype(np.float32)
                c.bulk_set("load", [(f"g{(start + i) % 500}", None, row.tolist(), "") for i, row in enumerate(v)])
        for n in args.levels:
            row = run_level(server.address, server.pid, n, args.seconds, images, args.max_requests)
            out.add(row, max_inflight=args.max_inflight)
    if out.json:
        return
    print(f"server --max-inflight {args.max_inflight}; mix: 50% search, 20% match, 20% set vector, 10% set photo")
    print(f"{'clients':>7} {'req':>7} {'ok/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'RSS MB start/peak/end':>22}  outcomes")
    for r in out.rows:
        mem = f"{r['rss_start_mb']:.0f}/{r['rss_peak_mb']:.0f}/{r['rss_end_mb']:.0f}"
        print(f"{r['clients']:>7} {r['requests']:>7} {r['ok_per_s']:7.1f} {r['p50_ms']:7.1f} {r['p99_ms']:8.1f} "
              f"{mem:>22}  {r['outcomes']}")  # fmt: skip


if __name__ == "__main__":
    main()
