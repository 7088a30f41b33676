"""Exact top-k benchmark: lookalike.native vs numpy, faiss IndexFlatIP and usearch (exact).

Everything runs in this one process on the same L2-normalised float32 data, each method with
its default thread count (all cores). Each cell is timed ``--runs`` times (3 when one call
takes over a second) after one warm-up call; the table reports the median and min wall time,
and ``vs numpy`` = numpy median / method median (above 1 means faster than numpy).
``recall`` is the overlap of each method's top-k ids with numpy's (exact methods agree up to
float ties).

    python bench/topk_bench.py                 # the full grid, about 2-3 minutes on 2 cores
    python bench/topk_bench.py --n 10000 --d 384 --m 1 64 --runs 3   # one slice
    python bench/topk_bench.py --threads 1     # every library on one thread (less noise)

numpy's top-k here is ``q @ db.T`` then ``argpartition`` and a sort of the k survivors.
faiss and usearch copies of the database are built outside the timed region.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from lookalike import native

Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Cell:
    n: int
    d: int
    m: int
    method: str
    median_ms: float
    min_ms: float
    vs_numpy: float
    recall: float


def numpy_topk(db: np.ndarray, k: int, threads: int) -> Search:
    # threads: set through OPENBLAS_NUM_THREADS before numpy loads (see main)
    def search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = q @ db.T  # [m, n]
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)

    return search


def lookalike_topk(db: np.ndarray, k: int, threads: int) -> Search:
    return lambda q: native.topk(db, q, k, threads=threads)


def faiss_topk(db: np.ndarray, k: int, threads: int) -> Search | None:
    try:
        import faiss
    except ImportError:
        return None
    if threads:
        faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return lambda q: index.search(q, k)


def usearch_topk(db: np.ndarray, k: int, threads: int) -> Search | None:
    try:
        from usearch.index import MetricKind, search
    except ImportError:
        return None

    def run(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = search(db, q, k, MetricKind.IP, exact=True, threads=threads)
        keys = np.asarray(found.keys).reshape(q.shape[0], -1)
        distances = np.asarray(found.distances).reshape(q.shape[0], -1)
        return 1.0 - distances, keys  # usearch's IP "distance" is 1 - <q, x>

    return run


def timed(search: Search, q: np.ndarray, runs: int) -> tuple[list[float], np.ndarray]:
    # Let the previous library's idle worker threads (OpenBLAS, OpenMP spin-wait for a while
    # after each call) go to sleep, so that they do not steal cores from this one.
    time.sleep(0.3)
    start = time.perf_counter()
    _, ids = search(q)  # warm-up (page faults, thread pools, lazy init)
    if time.perf_counter() - start > 1.0:
        runs = min(runs, 3)  # slow cells: three runs keep the grid within a few minutes
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - start)
    return times, ids


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, truth, strict=True))
    return hits / truth.size


def unit_rows(rng: np.random.Generator, rows: int, d: int) -> np.ndarray:
    x = rng.standard_normal((rows, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="database sizes")
    parser.add_argument("--d", type=int, nargs="+", default=[384, 1280, 2048], help="dimensions")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 64], help="queries per batch")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per cell (after one warm-up)")
    parser.add_argument(
        "--methods", nargs="+", default=["lookalike", "faiss", "usearch"], help="compared with numpy (always run)"
    )
    parser.add_argument("--threads", type=int, default=0, help="threads for every library; 0 = their defaults")
    parser.add_argument("--json", help="also write the cells to this file")
    args = parser.parse_args()
    if args.threads and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        # OpenBLAS and OpenMP read their thread counts when they load: start again with them set.
        os.environ.update(OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        os.execv(sys.executable, [sys.executable, *sys.argv])

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"lookalike simd={native.simd_level()}, k={args.k}, threads={args.threads or 'default'}, "
        f"{args.runs} runs per cell (3 when a call takes > 1 s), load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'n':>7} {'d':>5} {'m':>3}  {'method':<10} {'median ms':>10} {'min ms':>9} {'vs numpy':>9} {'recall':>7}")
    makers = {"numpy": numpy_topk, "lookalike": lookalike_topk, "faiss": faiss_topk, "usearch": usearch_topk}
    rng = np.random.default_rng(0)
    cells: list[Cell] = []
    start = time.perf_counter()
    for n in args.n:
        for d in args.d:
            db = unit_rows(rng, n, d)
            searches = {
                name: makers[name](db, args.k, args.threads) for name in dict.fromkeys(["numpy", *args.methods])
            }
            for m in args.m:
                q = unit_rows(rng, m, d)
                truth: np.ndarray | None = None
                base = 0.0
                for name, search in searches.items():
                    if search is None:  # library not installed
                        continue
                    times, ids = timed(search, q, args.runs)
                    median = statistics.median(times)
                    if name == "numpy":
                        truth, base = ids, median
                    assert truth is not None
                    cell = Cell(n, d, m, name, median * 1e3, min(times) * 1e3, base / median, recall(ids, truth))
                    cells.append(cell)
                    print(
                        f"{n:>7} {d:>5} {m:>3}  {name:<10} {cell.median_ms:>10.2f} {cell.min_ms:>9.2f} "
                        f"{cell.vs_numpy:>8.2f}x {cell.recall:>7.3f}",
                        flush=True,
                    )
            del db, searches
    print(f"# total {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(c) for c in cells], f, indent=1)


if __name__ == "__main__":
    main()
