"""End-to-end service timings: `lookalike match` on two photos, and search over N registered vectors.

Runs a real server on a loopback port (default model), registers N random unit vectors
through BulkSetImages, then times Search by vector and by image over gRPC, with the same
exact search done in-process by numpy as the reference. Medians over several runs; the
machine is shared, so read the ratios, not single numbers.

    .venv/bin/python bench/service_bench.py [--n 10000] [--runs 50] [--json]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
from harness import median_ms


def main() -> int:
    ap = harness.arguments(__doc__)
    ap.add_argument("--n", type=int, default=10_000, help="registered vectors")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--cli-runs", type=int, default=5)
    args = ap.parse_args()
    from lookalike.client import LookalikeClient

    out = harness.Results(args)
    with tempfile.TemporaryDirectory() as tmp, harness.server() as server:
        client = LookalikeClient(server.address)
        dim = server.service.embedder.dimension
        rng = np.random.default_rng(0)
        vecs = harness.unit_vectors(rng, args.n, dim)
        client.create_database("bench")
        t = time.perf_counter()
        summary = client.bulk_set("bench", ((f"g{i // 4}", None, v.tolist(), "") for i, v in enumerate(vecs)))
        ingest_s = time.perf_counter() - t
        assert summary.succeeded_count == args.n, summary.failures[:3]

        q = harness.unit_vectors(rng, 1, dim)[0]
        ql = q.tolist()
        grpc_vec = median_ms(lambda: client.search("bench", vector=ql, top_k=10), args.runs)
        grpc_group = median_ms(lambda: client.search("bench", vector=ql, top_k=10, one_per_group=True), args.runs)
        core_db = server.service.catalog.get("bench")
        core = median_ms(lambda: core_db.search(q, 10), args.runs)
        numpy_ref = median_ms(lambda: np.argpartition(-(vecs @ q), 10)[:10], args.runs)

        img_a, img_b = (harness.jpeg(a) for a in harness.photos(("chelsea", "coffee")))
        image_runs = max(5, args.runs // 5)
        search_img = median_ms(lambda: client.search("bench", image=img_a, top_k=10), image_runs)
        match_rpc = median_ms(lambda: client.match(img_a, img_b), image_runs)

        pa, pb = Path(tmp) / "a.jpg", Path(tmp) / "b.jpg"
        pa.write_bytes(img_a)
        pb.write_bytes(img_b)
        cli = [sys.executable, "-m", "lookalike", "match", str(pa), str(pb), "--server", server.address]
        match_cli = median_ms(lambda: subprocess.run(cli, check=True, capture_output=True), args.cli_runs)
        client.close()

    out.add(measure="register", n=args.n, d=dim, seconds=ingest_s, per_s=args.n / ingest_s)
    medians = {"search_vector_grpc": (grpc_vec, args.runs), "search_vector_grpc_one_per_group": (grpc_group, args.runs),
               "search_core": (core, args.runs), "search_numpy_reference": (numpy_ref, args.runs),
               "search_image_grpc": (search_img, image_runs), "match_rpc": (match_rpc, image_runs),
               "match_cli": (match_cli, args.cli_runs)}  # fmt: skip
    for measure, (ms, runs) in medians.items():
        out.add(measure=measure, median_ms=ms, runs=runs)
    if out.json:
        return 0
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
