"""Mixed load on a real server: search, match and registration at several concurrency levels, per port.

The server runs as a subprocess (`lookalike serve`) on loopback with its limits; client
threads in this process send a fixed mix for ``--seconds`` per level. ``--port grpc`` (the
default) sends the full gRPC mix: 50% search by vector, 20% match of two photos, 20% SetImage
with a vector, 10% SetImage with a photo. ``--port http`` drives the PAI-EAS JSON port instead
(``--http-port``) with what it offers: 50% ``db_search`` by photo, 50% ``match`` of two photos,
one ``requests`` session per client; ``--port both`` runs that photo mix on each port, level by
level, and prints the HTTP/gRPC ratios of ok/s and p50. Reported per level: requests/s, p50/p99
latency, outcomes by status and reason (zero errors below the limits, RESOURCE_EXHAUSTED / 429
above them), and the server's resident memory sampled every 0.2 s. Bounded in time and count;
loopback only.

    .venv/bin/python bench/load.py [--levels 1 4 16 64] [--seconds 30] [--max-inflight 16] [--json]
    .venv/bin/python bench/load.py --port both --levels 4 16 64 --seconds 10
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import harness
import numpy as np


def grpc_op(address: str, mix: str, images: list[bytes], vec_lists: list[list[float]]) -> Callable[[int], Any]:
    """A per-client factory: a context manager yielding ``op(w, n, r) -> outcome`` over one gRPC channel."""
    from lookalike.client import ClientError, LookalikeClient

    @contextlib.contextmanager
    def make(w: int) -> Iterator[Callable[[int, float], str]]:
        with LookalikeClient(address, timeout=60) as c:

            def op(n: int, pick: float) -> str:
                try:
                    if mix == "photo":
                        if pick < 0.5:
                            c.search("load", image=images[n % 4], top_k=10)
                        else:
                            c.match(images[n % 4], images[(n + 1) % 4])
                    elif pick < 0.5:
                        c.search("load", vector=vec_lists[n % 256], top_k=10)
                    elif pick < 0.7:
                        c.match(images[n % 4], images[(n + 1) % 4])
                    elif pick < 0.9:
                        c.set_image("load", f"c{w}", vector=vec_lists[n % 256])
                    else:
                        c.set_image("load", f"p{w}", image=images[n % 4])
                    return "OK"
                except ClientError as e:
                    return f"{e.code}/{e.reason}"

            yield op

    return make


def http_op(url: str, images: list[bytes]) -> Callable[[int], Any]:
    """The PAI JSON port: ``db_search`` by photo and ``match``, one keep-alive session per client."""
    import requests

    encoded = [base64.b64encode(b).decode() for b in images]

    @contextlib.contextmanager
    def make(w: int) -> Iterator[Callable[[int, float], str]]:
        with requests.Session() as session:

            def op(n: int, pick: float) -> str:
                if pick < 0.5:
                    body = {
                        "function_name": "db_search",
                        "function_params": {"database_name": "load", "image": encoded[n % 4], "search_topk": 10},
                    }
                else:
                    body = {"imagea": encoded[n % 4], "imageb": encoded[(n + 1) % 4]}  # fmt: skip
                try:
                    r = session.post(url, data=json.dumps(body), timeout=60)
                except requests.RequestException as e:
                    return f"ERROR/{type(e).__name__}"
                if r.status_code == 200:
                    return "OK"
                try:
                    reason = r.json().get("error_code", "")
                except ValueError:
                    reason = ""
                return f"{r.status_code}/{reason}"

            yield op

    return make


def run_level(make: Callable[[int], Any], pid: int, clients: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()
    rss: list[float] = []
    budget = [max_requests]

    def client(w: int) -> None:
        r = np.random.default_rng(w)
        with make(w) as op:
            n = 0
            while not stop.is_set():
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                t = time.perf_counter()
                outcome = op(n, r.random())
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


def http_url(server: harness.ServeProcess) -> str:
    for line in server.log_lines():
        if "PAI-compatible HTTP API on " in line:
            return line.rsplit(" ", 1)[1].strip().rstrip("/") + "/api/predict/load"
    raise RuntimeError("the server printed no HTTP port")


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=30.0, help="per level")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per level, a hard bound")
    ap.add_argument("--max-inflight", type=int, default=16, help="the server's --max-inflight (each port)")
    ap.add_argument("--preload", type=int, default=20_000, help="vectors registered before the run")
    ap.add_argument("--port", choices=("grpc", "http", "both"), default="grpc",
                    help="which port to load: gRPC (the full mix), the PAI JSON port (photo mix), or both "
                         "(photo mix on each, with HTTP/gRPC ratios)")  # fmt: skip
    args = ap.parse_args()
    from lookalike.client import LookalikeClient

    out = harness.Results(args)
    images = [harness.jpeg(a) for a in harness.photos(("chelsea", "coffee", "astronaut", "rocket"))]
    ports = ["grpc", "http"] if args.port == "both" else [args.port]
    mix = "mixed" if args.port == "grpc" else "photo"
    with (
        tempfile.TemporaryDirectory() as data,
        harness.ServeProcess(
            "--data-dir", data, "--max-inflight", str(args.max_inflight), "--log-level", "warning",
            "--http-port", "0",
        ) as server,
    ):  # fmt: skip
        with LookalikeClient(server.address) as c:
            c.create_database("load")
            rng = np.random.default_rng(0)
            for start in range(0, args.preload, 2000):
                v = rng.standard_normal((2000, 1280)).astype(np.float32)
                c.bulk_set("load", [(f"g{(start + i) % 500}", None, row.tolist(), "") for i, row in enumerate(v)])
        makers = {"grpc": grpc_op(server.address, mix, images, harness.unit_vectors(0, 256, 1280).tolist()),
                  "http": http_op(http_url(server), images)}  # fmt: skip
        for n in args.levels:
            for port in ports:
                row = run_level(makers[port], server.pid, n, args.seconds, args.max_requests)
                out.add(row, port=port, mix=mix, max_inflight=args.max_inflight)
    if out.json:
        return
    print(f"server --max-inflight {args.max_inflight} (each port); mix: " + (
        "50% search, 20% match, 20% set vector, 10% set photo" if mix == "mixed" else
        "50% search by photo (PAI db_search), 50% match"))  # fmt: skip
    print(f"{'port':>5} {'clients':>7} {'req':>7} {'ok/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'RSS MB start/peak/end':>22}"
          "  outcomes")  # fmt: skip
    for r in out.rows:
        mem = f"{r['rss_start_mb']:.0f}/{r['rss_peak_mb']:.0f}/{r['rss_end_mb']:.0f}"
        print(f"{r['port']:>5} {r['clients']:>7} {r['requests']:>7} {r['ok_per_s']:7.1f} {r['p50_ms']:7.1f} "
              f"{r['p99_ms']:8.1f} {mem:>22}  {r['outcomes']}")  # fmt: skip
    if args.port == "both":
        print("HTTP / gRPC at the same concurrency:")
        by = {(r["port"], r["clients"]): r for r in out.rows}
        for n in args.levels:
            g, h = by[("grpc", n)], by[("http", n)]
            print(f"  {n:>3} clients: ok/s x{h['ok_per_s'] / max(g['ok_per_s'], 1e-9):.2f}, "
                  f"p50 x{h['p50_ms'] / g['p50_ms']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
