"""What durability costs: registration throughput per fsync mode, snapshot and start-up times.

1. Registrations/s with precomputed vectors (the embedder is not the bottleneck) through a
   real server over loopback gRPC: single SetImage calls from several client threads, and
   BulkSetImages streams, under ``--fsync always``, ``batch`` and ``never`` and against the
   in-memory server (``--in-memory``, no log) in the same run. Medians of ``--runs``.
2. Snapshot write time, snapshot load (start-up) time and replay time for N x d vectors,
   in-process on a local data directory; and through an OSS root on moto (loopback) at a
   smaller N (moto keeps objects in this process's memory).

    .venv/bin/python bench/durability.py [--json] [--runs 3] [--sizes 1000000x384 1000000x1280]
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import threading
import time
from pathlib import Path

import harness
from harness import unit_vectors

DIM = 1280


def registration(mode: str, runs: int, seconds: float, clients: int, bulk_n: int) -> list[dict]:
    from lookalike.client import LookalikeClient

    single, bulk = [], []
    vecs = unit_vectors(1, 4096, DIM).tolist()
    memory = mode == "memory"
    with harness.server(snapshot_interval_s=0.0, persist=not memory, fsync="batch" if memory else mode) as server:
        for run in range(runs):
            with LookalikeClient(server.address) as c:
                c.create_database(f"r{run}")
            counts = [0] * clients
            stop = threading.Event()

            def work(w: int, run: int = run, counts: list[int] = counts, stop: threading.Event = stop) -> None:
                with LookalikeClient(server.address) as c:
                    while not stop.is_set():
                        c.set_image(f"r{run}", f"w{w}", vector=vecs[counts[w] % 4096])
                        counts[w] += 1

            threads = [threading.Thread(target=work, args=(w,)) for w in range(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            time.sleep(seconds)
            stop.set()
            for t in threads:
                t.join()
            single.append(sum(counts) / (time.perf_counter() - t0))
            with LookalikeClient(server.address) as c:
                t0 = time.perf_counter()
                summary = c.bulk_set(f"r{run}", [("bulk", None, vecs[i % 4096], "") for i in range(bulk_n)])
                bulk.append(summary.succeeded_count / (time.perf_counter() - t0))
    return [{"bench": "register", "fsync": mode, "call": "SetImage", "clients": clients,
             "per_s": statistics.median(single), "runs": single},
            {"bench": "register", "fsync": mode, "call": "BulkSetImages", "clients": 1,
             "per_s": statistics.median(bulk), "runs": bulk}]  # fmt: skip


def snapshot_cycle(n: int, d: int, root: str | None = None, endpoint: str | None = None) -> dict:
    from lookalike.server.core.backends.builtin.catalog import Catalog
    from lookalike.server.core.backends.builtin.persistence import Persistence

    from lookalike.oss import OssClient, OssCredentials

    model = {"name": "bench", "dimension": d, "digest": "bench"}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        oss = OssClient(endpoint, OssCredentials("bench", "bench"), path_style=True) if root else None
        p = Persistence(Path(tmp) / "a", root=root, oss=oss, fsync="never")
        cat = Catalog(d, model, p)
        cat.recover()
        cat.create("big")
        chunk = unit_vectors(7, 8192, d)
        t0 = time.perf_counter()
        for start in range(0, n, len(chunk)):
            m = min(len(chunk), n - start)
            cat.set_images("big", [(f"g{start // 1000}", None, "", None)] * m, chunk[:m])
        insert_s = time.perf_counter() - t0
        p.wal.close()
        del cat
        gc.collect()
        t0 = time.perf_counter()
        p2 = Persistence(Path(tmp) / "a", root=root, oss=oss, fsync="never")
        replay_cat = Catalog(d, model, p2)
        replay_cat.recover()
        replay_s = time.perf_counter() - t0
        assert replay_cat.get("big").size == n
        t0 = time.perf_counter()
        info = replay_cat.checkpoint()
        snapshot_s = time.perf_counter() - t0
        replay_cat.persistence.close()
        del replay_cat
        gc.collect()
        target = Path(tmp) / ("b" if root else "a")
        t0 = time.perf_counter()
        p3 = Persistence(target, root=root, oss=oss, fsync="never")
        loaded = Catalog(d, model, p3)
        loaded.recover()
        startup_s = time.perf_counter() - t0
        assert loaded.get("big").size == n
        q = unit_vectors(3, 1, d)[0]
        t0 = time.perf_counter()
        loaded.get("big").search(q, 10)
        first_search_ms = (time.perf_counter() - t0) * 1e3
        p3.close()
        return {"bench": "snapshot", "where": "oss(moto)" if root else "local", "n": n, "d": d,
                "insert_s": insert_s, "replay_s": replay_s, "snapshot_s": snapshot_s,
                "snapshot_bytes": info.size_bytes, "startup_s": startup_s,
                "first_search_ms": first_search_ms}  # fmt: skip


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="per SetImage run")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--bulk", type=int, default=4000, help="vectors per BulkSetImages run")
    ap.add_argument("--modes", nargs="*", default=["memory", "never", "batch", "always"])
    ap.add_argument("--sizes", nargs="*", default=["1000000x384", "1000000x1280"], help="NxD for snapshots")
    ap.add_argument("--oss-size", default="100000x384", help="NxD through moto; '' to skip")
    args = ap.parse_args()
    out = harness.Results(args)
    for mode in args.modes:
        for row in registration(mode, args.runs, args.seconds, args.clients, args.bulk):
            out.add(row)
    for size in args.sizes:
        n, d = (int(x) for x in size.split("x"))
        out.add(snapshot_cycle(n, d))
    if args.oss_size:
        import logging

        import boto3

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        srv = harness.from_tests("moto_s3").s3_only_server()  # the tests' S3 server
        srv.start()
        host, port = srv.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                     region_name="us-east-1").create_bucket(Bucket="bench")  # fmt: skip
        n, d = (int(x) for x in args.oss_size.split("x"))
        out.add(snapshot_cycle(n, d, root="oss://bench/lookalike/", endpoint=endpoint))
        srv.stop()
    if out.json:
        return
    rows = out.rows
    base = {r["call"]: r["per_s"] for r in rows if r["bench"] == "register" and r["fsync"] == "memory"}
    print(f"{'fsync':8} {'call':14} {'per s':>10} {'vs in-memory':>13}")
    for r in rows:
        if r["bench"] == "register":
            ratio = r["per_s"] / base[r["call"]] if r["call"] in base else float("nan")
            print(f"{r['fsync']:8} {r['call']:14} {r['per_s']:10.0f} {ratio:12.2f}x")
    print(f"\n{'where':10} {'n x d':>14} {'insert s':>9} {'replay s':>9} {'snapshot s':>11} {'GB':>6} "
          f"{'start-up s':>11} {'1st search ms':>14}")  # fmt: skip
    for r in rows:
        if r["bench"] == "snapshot":
            print(f"{r['where']:10} {r['n']:>8}x{r['d']:<5} {r['insert_s']:9.1f} {r['replay_s']:9.1f} "
                  f"{r['snapshot_s']:11.1f} {r['snapshot_bytes'] / 1e9:6.2f} {r['startup_s']:11.2f} "
                  f"{r['first_search_ms']:14.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
