"""Serving throughput and latency over loopback gRPC: ours against a naive baseline server, same run.

Each server runs in its own process (so the load generator's threads do not share its GIL) and
is measured alone while the other idles. Workloads, each at 1, 4 and 16 concurrent clients
(one channel per client):

- ``match``: Match of two 1600x1200 JPEG photos;
- ``search``: Search by a 1600x1200 JPEG over ``--db-size`` registered vectors, top 10;
- ``bulk``: BulkSetImages streams of ``--bulk-batch`` 640x480 JPEGs (throughput in images/s).

The naive baseline is the same server code with batching off (max batch 1), one model call at a
time (``--model-workers 1``, torch's threads over all cores), full-size decoding
(no JPEG draft), decoding one image after another (no pool), and the model file run as loaded in
fp32 (``--cpu-exec eager``), i.e. what a straightforward server would do. Also timed: ``lookalike add``
of a folder of 640x480 JPEGs through the real CLI (issue target: >= 80 images/s). Prints a table with
ours/baseline ratios; ``--json`` prints one object per measurement instead. The machine may be shared: read ratios.

    nice -n 10 .venv/bin/python bench/serve.py [--seconds 4] [--clients 1,4,16] [--json]
    # other servers to compare: --variant NAME:key=value,key=value (ServerConfig fields; naive=1 for the baseline)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np

MATCH_SIZE = (1600, 1200)
BULK_SIZE = (640, 480)


# -- the server side (a child process) -------------------------------------------------------
def make_naive(embedder: Any) -> None:
    """Turn a running embedder into the naive baseline: full-size decode, no decode pool (batching off by config)."""
    from lookalike.server.core.embedding.images import decode_image
    from lookalike.server.core.errors import LookalikeError

    from lookalike.modelfile import preprocess

    def prepare(data: bytes, *, field: str = "image") -> np.ndarray:
        img = decode_image(data, max_bytes=embedder.max_image_bytes, max_pixels=embedder.max_image_pixels,
                           draft_size=None, field=field)  # fmt: skip
        return preprocess(img, embedder.meta)

    def prepare_many(images: list[bytes], *, field: str = "images") -> list[Any]:
        out: list[Any] = []
        for i, data in enumerate(images):
            try:
                out.append(prepare(data, field=f"{field}[{i}]"))
            except LookalikeError as err:
                out.append(err)
        return out

    embedder.prepare = prepare
    embedder.prepare_many = prepare_many


def serve_child(spec: dict[str, Any]) -> int:
    import dataclasses

    from lookalike.server.config import ServerConfig, _convert  # the same parsing as flags and variables

    fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    overrides = {k: _convert(fields[k], str(v), k) for k, v in spec["config"].items()}
    threads = ServerConfig(port=0, persist=False, **overrides).thread_budget
    with harness.server(persist=False, **overrides) as running:
        if spec.get("naive"):
            make_naive(running.service.embedder)
        if spec.get("jit_optimize") is False:  # torch's JIT: no shape specialisation on the model thread
            import torch

            running.service.embedder.batcher.call_in_worker(
                lambda: torch._C._set_graph_executor_optimize(False)
            ).result()
        print(json.dumps({"port": running.port, "threads": threads}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin
    return 0


# -- the client side ---------------------------------------------------------------------------
class Server:
    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"server {name} did not start (exit {self.proc.wait()})")
        info = json.loads(line)
        self.address = f"127.0.0.1:{info['port']}"
        self.threads = info["threads"]

    def stop(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_load(
    address: str, clients: int, seconds: float, warmup: float, call: Callable[[Any, int, int], int]
) -> dict[str, Any]:
    """``clients`` threads, each with its own channel, call ``call(client, thread, i) -> items`` until time is up."""
    from lookalike.client import LookalikeClient

    stop_at = [0.0]
    measuring = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    items = [0]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def worker(t: int) -> None:
        with LookalikeClient(address, timeout=120) as c:
            start.wait()
            i = 0
            while True:
                began = time.perf_counter()
                if began >= stop_at[0]:
                    return
                try:
                    n = call(c, t, i)
                except Exception as exc:  # counted, shown; a benchmark should not die on one refusal
                    with lock:
                        errors.append(str(exc)[:200])
                    n = 0
                ended = time.perf_counter()
                i += 1
                if measuring.is_set() and ended <= stop_at[0]:
                    with lock:
                        latencies.append(ended - began)
                        items[0] += n

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(clients)]
    for th in threads:
        th.start()
    now = time.perf_counter()
    stop_at[0] = now + warmup + seconds
    start.wait()
    time.sleep(warmup)
    measuring.set()
    began = time.perf_counter()
    for th in threads:
        th.join()
    window = min(time.perf_counter(), stop_at[0]) - began
    p50, p99 = harness.p50_p99(latencies)
    return {
        "calls": len(latencies),
        "items": items[0],
        "seconds": round(window, 3),
        "calls_per_s": round(len(latencies) / window, 2),
        "items_per_s": round(items[0] / window, 2),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def cli_bulk(address: str, folder: Path) -> dict[str, Any]:
    """``lookalike add`` of a folder, end to end (process start, reading files, streaming, durable answer)."""
    env = dict(os.environ, LOOKALIKE_SERVER=address)
    db = f"cli{int(time.time() * 1000) % 10**9}"
    subprocess.run([sys.executable, "-m", "lookalike", "db", "create", db], env=env, check=True, capture_output=True)
    n = len(list(folder.glob("*.jpg")))
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lookalike", "add", "--db", db, "--json", str(folder)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    elapsed = time.perf_counter() - began
    ok = json.loads(proc.stdout)["registered"] if proc.returncode == 0 else 0
    return {"items": n, "succeeded": ok, "seconds": round(elapsed, 2), "items_per_s": round(ok / elapsed, 1)}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    config: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    naive = False
    for pair in filter(None, rest.split(",")):
        key, _, val = pair.partition("=")
        if key == "naive":
            naive = val not in ("0", "false", "")
        elif key == "jit_optimize":
            extra["jit_optimize"] = val not in ("0", "false", "")
        else:
            config[key.replace("-", "_")] = val
    return name, {"naive": naive, "config": config, **extra}


def main() -> int:
    ap = harness.arguments(__doc__)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring each point")
    ap.add_argument("--clients", default="1,4,16", help="concurrent clients per point")
    ap.add_argument("--workloads", default="match,search,bulk")
    ap.add_argument("--db-size", type=int, default=10_000, help="vectors registered for the search workload")
    ap.add_argument("--bulk-batch", type=int, default=16, help="640x480 JPEGs per BulkSetImages stream")
    ap.add_argument("--cli-images", type=int, default=256, help="images for the `lookalike add` timing; 0 = skip")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra server NAME:key=value,... (ServerConfig fields; naive=1 for the baseline's shortcuts)",
    )
    args = ap.parse_args()
    if args.serve:
        return serve_child(json.loads(args.serve))

    bench_limits = {"max_streams": 32, "max_inflight": 64}  # 16 clients must not be refused by admission control
    variants = [
        ("ours", {"naive": False, "config": dict(bench_limits)}),
        (
            "baseline",
            {
                "naive": True,
                "config": {**bench_limits, "max_batch": 1, "batch_wait_ms": 0, "cpu_exec": "eager", "model_workers": 1},
            },
        ),
    ]
    for text in args.variant:
        name, spec = parse_variant(text)
        spec["config"] = {**bench_limits, **spec["config"]}
        variants.append((name, spec))
    clients = [int(c) for c in args.clients.split(",")]
    workloads = args.workloads.split(",")

    arrays = harness.photos(("chelsea", "coffee", "astronaut", "rocket", "cat"))
    big = [harness.jpeg(a, MATCH_SIZE) for a in arrays]
    small = [harness.jpeg(a, BULK_SIZE) for a in arrays]
    out = harness.Results(args)
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(out.add(row))
        if out.table:  # progress; the table follows at the end
            print(f"# {row['server']:>10} {row['workload']:>8} x{row.get('clients', '-'):<3} "
                  f"{row.get('items_per_s')}/s p50 {row.get('p50_ms')} ms", file=sys.stderr, flush=True)  # fmt: skip

    from lookalike.client import LookalikeClient

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cli-images"
        harness.jpeg_folder(folder, args.cli_images, arrays, BULK_SIZE)
        rng = np.random.default_rng(0)
        servers = [Server(name, spec) for name, spec in variants]  # all up, each measured alone in turn
        try:
            for server in servers:
                with LookalikeClient(server.address) as c:
                    dim = c.create_database("search").dimension
                    vecs = harness.unit_vectors(rng, args.db_size, dim)
                    for s in range(0, args.db_size, 2000):
                        part = range(s, min(s + 2000, args.db_size))
                        c.bulk_set("search", ((f"g{i}", None, vecs[i].tolist(), "") for i in part))
                    c.create_database("bulk")
                    c.match(big[0], big[1])  # first call: lazy initialisation out of the way
            calls: dict[str, Callable[[Any, int, int], int]] = {
                "match": lambda c, t, i: (c.match(big[(t + i) % 5], big[(t + i + 1) % 5]), 1)[1],
                "search": lambda c, t, i: (c.search("search", image=big[(t + i) % 5], top_k=10), 1)[1],
                "bulk": lambda c, t, i: (
                    c.bulk_set(
                        "bulk", [(f"t{t}-{i}", None, small[(t + i + k) % 5], str(k)) for k in range(args.bulk_batch)]
                    ).succeeded_count
                ),
            }
            # Interleaved (each point: every server back to back), so a shared machine's load hits all alike.
            for workload in workloads:
                for n in clients:
                    for server in servers:
                        result = run_load(server.address, n, args.seconds, args.warmup, calls[workload])
                        emit({"server": server.name, "workload": workload, "clients": n, **result,
                              "threads": server.threads, "config": server.spec})  # fmt: skip
            if args.cli_images:
                for server in servers:
                    emit({"server": server.name, "workload": "cli_add", **cli_bulk(server.address, folder)})
        finally:
            for server in servers:
                server.stop()

    # ratios against the baseline, same run
    base = {(r["workload"], r.get("clients")): r for r in rows if r["server"] == "baseline"}
    table = []
    for r in rows:
        b = base.get((r["workload"], r.get("clients")))
        if b and r["server"] != "baseline" and b["items_per_s"]:
            ratio = {"server": r["server"], "workload": r["workload"], "clients": r.get("clients"),
                     "throughput_ratio": round(r["items_per_s"] / b["items_per_s"], 2)}  # fmt: skip
            if "p50_ms" in r and b.get("p50_ms"):
                ratio["p50_ratio"] = round(r["p50_ms"] / b["p50_ms"], 2)
            table.append(ratio)
            out.add(ratio_vs_baseline=ratio)
    ratios = {(t["server"], t["workload"], t["clients"]): t["throughput_ratio"] for t in table}
    head = ["server", "workload", "clients", "items/s", "p50 ms", "p99 ms", "x baseline (throughput)", "errors"]
    out.print_table(harness.markdown(head, ([r["server"], r["workload"], r.get("clients", "-"), r["items_per_s"],
                                             r.get("p50_ms", "-"), r.get("p99_ms", "-"),
                                             ratios.get((r["server"], r["workload"], r.get("clients")), ""),
                                             r.get("errors", 0)] for r in rows)))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
