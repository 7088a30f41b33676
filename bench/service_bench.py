"""End-to-end service timings: `lookalike match` on two photos, and search over N registered vectors.

Runs a real server on a loopback port (default model), registers N random unit vectors
through BulkSetImages, then times Search by vector and by image over gRPC, with the same
exact search done in-process by numpy as the reference. Medians over several runs; the
machine is shared, so read the ratios, not single numbers.

    .venv/bin/python bench/service_bench.py [--n 10000] [--runs 50]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def jpeg(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def median_ms(fn, runs: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="registered vectors")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--cli-runs", type=int, default=5)
    args = ap.parse_args()

    import skimage.data
    from lookalike.client import LookalikeClient
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    with tempfile.TemporaryDirectory() as tmp:
        server = create_server(ServerConfig(port=0, data_dir=Path(tmp)))
        client = LookalikeClient(server.address)
        dim = server.service.embedder.dimension
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((args.n, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        client.create_database("bench")
        t = time.perf_counter()
        summary = client.bulk_set("bench", ((f"g{i // 4}", None, v.tolist(), "") for i, v in enumerate(vecs)))
        ingest_s = time.perf_counter() - t
        assert summary.succeeded_count == args.n, summary.failures[:3]

        q = rng.standard_normal(dim).astype(np.float32)
        q /= np.linalg.norm(q)
        ql = q.tolist()
        grpc_vec = median_ms(lambda: client.search("bench", vector=ql, top_k=10), args.runs)
        grpc_group = median_ms(lambda: client.search("bench", vector=ql, top_k=10, one_per_group=True), args.runs)
        core_db = server.service.catalog.get("bench")
        core = median_ms(lambda: core_db.search(q, 10), args.runs)
        numpy_ref = median_ms(lambda: np.argpartition(-(vecs @ q), 10)[:10], args.runs)

        a, b = skimage.data.chelsea(), skimage.data.coffee()
        img_a, img_b = jpeg(a), jpeg(b)
        search_img = median_ms(lambda: client.search("bench", image=img_a, top_k=10), max(5, args.runs // 5))
        match_rpc = median_ms(lambda: client.match(img_a, img_b), max(5, args.runs // 5))

        pa, pb = Path(tmp) / "a.jpg", Path(tmp) / "b.jpg"
        pa.write_bytes(img_a)
        pb.write_bytes(img_b)
        cli = [sys.executable, "-m", "lookalike", "match", str(pa), str(pb), "--server", server.address]
        match_cli = median_ms(lambda: subprocess.run(cli, check=True, capture_output=True), args.cli_runs)
        server.stop(0)

    print(f"registered {args.n} vectors (dim {dim}) via BulkSetImages in {ingest_s:.2f} s ({args.n / ingest_s:.0f}/s)")
    print(f"search by vector, top-10, gRPC round trip : {grpc_vec:8.2f} ms (median of {args.runs})")
    print(f"  same, one_per_group                     : {grpc_group:8.2f} ms")
    print(f"  core Database.search in-process         : {core:8.2f} ms")
    print(
        f"  numpy matvec + argpartition (reference) : {numpy_ref:8.2f} ms  -> core/numpy ratio {core / numpy_ref:.2f}"
    )
    print(f"search by image (embed + search), gRPC    : {search_img:8.2f} ms")
    print(f"Match RPC, two 640x427 JPEGs              : {match_rpc:8.2f} ms")
    print(
        f"`lookalike match a.jpg b.jpg` CLI, wall   : {match_cli:8.2f} ms (median of {args.cli_runs}, incl. start-up)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
