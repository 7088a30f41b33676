"""Exact top-k benchmark: lookalike.native in every storage type, beside the machine's ceilings
and its peers (numpy, FAISS flat and scalar quantizers, usearch exact), all in one process.

Rows (``--out PATH`` writes them as JSON lines, one object per row, beside the table; ``--json``
prints them to stdout instead of the table), each with ``method``, ``storage``, ``n``, ``d``, ``m``, ``k``,
``qps``, ``recall_at_k``, ``gbps``, ``gflops`` (and ``ms``, ``ms_min``, ``runs``):

- ``read_ceiling``: a multithreaded streaming read of the float32 database's bytes in C++
  (``native.stream_read``, the kernel's thread pool and widest loads): the bandwidth ceiling.
- ``sgemm_ceiling``: a large float32 matrix product through numpy (BLAS): the compute ceiling.
- ``gemm_ceiling`` (storage ``bf16`` / ``i8``): the same 2048 x 2048 x 4096 product in bfloat16
  (``torch.matmul``) and int8 (``torch._int_mm``, int32 sums) on the CPU, through oneDNN, which
  uses AMX tiles where the CPU has them (``amx`` in the header line): the ceilings of the bf16
  and int8 kernels at m > 1. Skipped without torch.
- ``numpy``: ``q @ db.T`` + ``argpartition`` + sort of the k survivors (float32).
- ``lookalike``: ``native.topk`` over the database stored as f32, f16, bf16 or i8.
- ``lookalike_rerank``: the i8 / f16 / bf16 scan asked for ``--rerank`` x k candidates, then
  ``native.rerank`` against the float32 copy (recall after re-rank).
- ``lookalike_group``: one-per-group search (``groups``, ``one_per_group=True``) in one scan;
  its recall is against the exact float32 one-per-group answer.
- ``faiss_flat`` (IndexFlatIP, f32), ``faiss_sq_fp16`` / ``faiss_sq_bf16`` / ``faiss_sq_8bit``
  (IndexScalarQuantizer, inner product), ``usearch_exact`` (usearch.index.search, exact=True).

Data: clustered, L2-normalised float32 vectors (queries from the same distribution), the shape of
real image embeddings; recall@k is against the exact float32 answer (lookalike f32, checked
against numpy). Timing: one warm-up call, then ``--runs`` timed calls (a cell whose warm-up
takes over 2 s is timed by that call alone); rows report the median (``qps``, ``ms``) and the
best run (``qps_best``, ``ms_min``); the ceilings and the printed ratios use best runs, the least
disturbed by other processes on a shared machine. ``gbps`` = bytes of the stored database
(scales included) / median time; ``gflops`` = 2 n d m / median time.

    python bench/topk_bench.py                                    # the default grid
    python bench/topk_bench.py --n 1000000 --d 384 --m 1 64 --storage f32 f16 bf16 i8 --out out.jsonl
    python bench/topk_bench.py --markdown out.jsonl              # an --out file as ext/README.md's table
    python bench/topk_bench.py --threads 2 ...                    # every library on 2 threads

Ratios printed after each block: every storage's QPS vs lookalike f32 and vs FAISS's quantizer of
the same width, f32 vs the read / SGEMM ceilings and FAISS flat, one-per-group time vs plain.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import harness
import numpy as np
from harness import Results, Row, recall

from lookalike import native

Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
STORAGES = ("f32", "f16", "bf16", "i8")


def timed(fn: Callable[[], Any], runs: int) -> tuple[list[float], Any]:
    # Let the previous library's idle workers (OpenBLAS, OpenMP spin for a while after each call)
    # go to sleep so that they do not steal cores from this one.
    time.sleep(0.2)
    start = time.perf_counter()
    out = fn()  # warm-up: page faults, thread pools, lazy init
    first = time.perf_counter() - start
    if first > 2.0:
        return [first], out
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times, out


def row(method: str, storage: str | None, n: int | None, d: int | None, m: int | None, k: int | None, **kw: Any) -> Row:
    base: Row = {"method": method, "storage": storage, "n": n, "d": d, "m": m, "k": k}
    base.update({key: None for key in ("qps", "recall_at_k", "gbps", "gflops")})
    base.update(kw)
    return base


def cell(
    method: str,
    storage: str,
    n: int,
    d: int,
    q: np.ndarray,
    k: int,
    nbytes: int,
    fn: Search,
    runs: int,
    truth: np.ndarray | None,
) -> tuple[Row, np.ndarray]:
    m = q.shape[0]
    times, (_, ids) = timed(lambda: fn(q), runs)
    t = statistics.median(times)
    r = row(
        method,
        storage,
        n,
        d,
        m,
        k,
        qps=m / t,
        recall_at_k=None if truth is None else recall(np.asarray(ids), truth),
        gbps=nbytes / t / 1e9,
        gflops=2.0 * n * d * m / t / 1e9,
        ms=t * 1e3,
        ms_min=min(times) * 1e3,
        qps_best=m / min(times),
        runs=len(times),
    )
    return r, np.asarray(ids)


def numpy_search(db: np.ndarray, k: int) -> Search:
    def search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = q @ db.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)

    return search


def faiss_index(kind: str, x: np.ndarray) -> Any | None:
    try:
        import faiss
    except ImportError:
        return None
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        qtype = {"fp16": "QT_fp16", "bf16": "QT_bf16", "8bit": "QT_8bit"}[kind]
        if not hasattr(faiss.ScalarQuantizer, qtype):
            return None
        index = faiss.IndexScalarQuantizer(d, getattr(faiss.ScalarQuantizer, qtype), faiss.METRIC_INNER_PRODUCT)
        index.train(x[: min(len(x), 200_000)])
    index.add(x)
    return index


def usearch_search(db: np.ndarray, k: int, threads: int) -> Search | None:
    try:
        from usearch.index import MetricKind, search
    except ImportError:
        return None

    def run(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = search(db, q, k, MetricKind.IP, exact=True, threads=threads)
        keys = np.asarray(found.keys).reshape(q.shape[0], -1)
        return 1.0 - np.asarray(found.distances).reshape(q.shape[0], -1), keys.astype(np.int64)

    return run


def sgemm_ceiling(runs: int) -> Row:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2048, 2048), np.float32)
    b = rng.standard_normal((2048, 4096), np.float32)
    times, _ = timed(lambda: a @ b, runs)
    t = statistics.median(times)
    return row(
        "sgemm_ceiling",
        "f32",
        None,
        None,
        None,
        None,
        gflops=2.0 * 2048 * 2048 * 4096 / min(times) / 1e9,  # the best run: a ceiling
        ms=t * 1e3,
        ms_min=min(times) * 1e3,
        runs=len(times),
    )


GEMM_SHAPE = (2048, 2048, 4096)


def narrow_gemms(threads: int) -> dict[str, Callable[[], object]]:
    """bf16 and int8 GEMMs of GEMM_SHAPE through torch on the CPU (oneDNN: AMX tiles where the CPU
    has them, AVX-512 BF16 / VNNI or plain AVX otherwise), keyed by storage; {} without torch."""
    try:
        import torch
    except ImportError:
        return {}
    if threads:
        torch.set_num_threads(threads)
    m, k, n = GEMM_SHAPE
    gen = torch.Generator().manual_seed(1)
    out: dict[str, Callable[[], object]] = {}
    a16 = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    b16 = torch.randn(k, n, generator=gen).to(torch.bfloat16)
    out["bf16"] = lambda: torch.matmul(a16, b16)
    a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
    b8 = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=gen)
    try:
        torch._int_mm(a8[:32, :32], b8[:32, :32])
        out["i8"] = lambda: torch._int_mm(a8, b8)
    except (AttributeError, RuntimeError):
        pass
    return out


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_tile" in flags and "amx_bf16" in flags


def gemm_ceilings(gemms: dict[str, Callable[[], object]], runs: int) -> list[Row]:
    rows = []
    flops = 2.0 * GEMM_SHAPE[0] * GEMM_SHAPE[1] * GEMM_SHAPE[2]
    for storage, fn in gemms.items():
        times, _ = timed(fn, runs)
        rows.append(
            row(
                "gemm_ceiling",
                storage,
                None,
                None,
                None,
                None,
                gflops=flops / min(times) / 1e9,
                ms=statistics.median(times) * 1e3,
                ms_min=min(times) * 1e3,
                runs=len(times),
            )
        )
    return rows


def table_line(r: Row) -> str:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    return (f"{f(r['n'], '>8')} {f(r['d'], '>5')} {f(r['m'], '>4')}  {r['method']:<17} {f(r['storage'], '<5')} "
            f"{f(r['qps'], '>10.1f')} {f(r.get('ms'), '>9.2f')} {f(r['gbps'], '>7.1f')} {f(r['gflops'], '>7.1f')} "
            f"{f(r['recall_at_k'], '>7.3f')}")  # fmt: skip


def find(rows: list[Row], method: str, storage: str | None = None, m: int | None = None) -> Row | None:
    for r in rows:
        if r["method"] == method and (storage is None or r["storage"] == storage) and (m is None or r["m"] == m):
            return r
    return None


def ratios(out: Results, block: list[Row], ceilings: dict[str, float]) -> None:
    """The issue's targets as ratios within this (n, d, m) block, from each cell's best run (the
    least disturbed by other processes on a shared machine; medians are in the rows)."""
    f32 = find(block, "lookalike", "f32")
    if f32 is None:
        return
    parts = []
    if "read" in ceilings and f32["m"] == 1:
        parts.append(f"f32 {f32['gbps'] * f32['ms'] / f32['ms_min'] / ceilings['read']:.0%} of read ceiling")
    if "sgemm" in ceilings and f32["m"] > 1:
        parts.append(f"f32 {f32['gflops'] * f32['ms'] / f32['ms_min'] / ceilings['sgemm']:.0%} of SGEMM")
    for s in ("bf16", "i8"):
        r = find(block, "lookalike", s)
        if r is not None and r["m"] > 1 and f"gemm_{s}" in ceilings:
            parts.append(f"{s} {r['gflops'] * r['ms'] / r['ms_min'] / ceilings[f'gemm_{s}']:.0%} of {s} GEMM")
    peers = {"f32": "faiss_flat", "f16": "faiss_sq_fp16", "bf16": "faiss_sq_bf16", "i8": "faiss_sq_8bit"}
    for s in STORAGES:
        r = find(block, "lookalike", s)
        if r is None:
            continue
        if s != "f32":
            parts.append(f"{s} {r['qps_best'] / f32['qps_best']:.2f}x f32")
        peer = find(block, peers[s]) or (find(block, "faiss_sq_fp16") if s == "bf16" else None)
        if peer is not None:
            parts.append(f"{s} {r['qps_best'] / peer['qps_best']:.1f}x {peer['method']}")
        group = find(block, "lookalike_group", s)
        if group is not None:
            parts.append(f"{s} group/plain time {r['qps_best'] / group['qps_best']:.2f}")
    numpy_row = find(block, "numpy")
    if numpy_row is not None:
        parts.append(f"f32 {f32['qps_best'] / numpy_row['qps_best']:.1f}x numpy")
    out.say("  ratios: " + "; ".join(parts))


def stored(x: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray | None]:
    if storage == "f32":
        return x, None
    if storage == "f16":
        return x.astype(np.float16), None
    if storage == "bf16":
        return native.to_bfloat16(x), None
    return native.quantize_int8(x)


def paired(
    out: Results,
    args: argparse.Namespace,
    n: int,
    d: int,
    x: np.ndarray,
    queries: dict[int, np.ndarray],
    groups: np.ndarray | None,
) -> None:
    """Round-robin timing of the targets' pairs: every round calls each method once, in turn, so
    that a burst of load from other processes hits all of them alike; each method's best round
    gives the ratios (rows carry ``mode: paired``). Holds every storage type at once."""
    k = args.k
    dbs = {s: stored(x, s) for s in args.storage}
    nbytes = {s: db.nbytes + (0 if sc is None else sc.nbytes) for s, (db, sc) in dbs.items()}
    a = np.random.default_rng(1).standard_normal((2048, 2048), np.float32)
    b = np.random.default_rng(2).standard_normal((2048, 4096), np.float32)
    gemms = narrow_gemms(args.threads or native.get_threads())
    for m, q in queries.items():
        calls: list[tuple[str, str, Callable[[], object]]] = []
        calls.append(("read_ceiling", "f32", lambda: native.stream_read(x)))
        if m > 1:
            calls.append(("sgemm_ceiling", "f32", lambda: a @ b))
            calls.extend(("gemm_ceiling", s, fn) for s, fn in gemms.items() if s in dbs)
        for s, (db, sc) in dbs.items():
            calls.append(("lookalike", s, lambda db=db, sc=sc, q=q: native.topk(db, q, k, scales=sc)))
            if groups is not None and s in ("f32", "i8"):
                calls.append(
                    (
                        "lookalike_group",
                        s,
                        lambda db=db, sc=sc, q=q: native.topk(db, q, k, scales=sc, groups=groups, one_per_group=True),
                    )
                )
        times: dict[tuple[str, str], list[float]] = {(name, s): [] for name, s, _ in calls}
        for _, _, fn in calls:
            fn()  # warm-up
        for _ in range(args.runs):
            for name, s, fn in calls:
                # As in timed(): the previous call's idle workers (OpenBLAS, OpenMP spin for a
                # while after each call) go to sleep first, or they steal cores from this one
                # (without it the lookalike call right after the GEMMs ran up to 25% slower).
                time.sleep(0.2)
                start = time.perf_counter()
                fn()
                times[(name, s)].append(time.perf_counter() - start)
        best: dict[tuple[str, str], float] = {key: min(v) for key, v in times.items()}
        for (name, s), v in times.items():
            t, tb = statistics.median(v), min(v)
            r = row(name, s, n, d, m, k, ms=t * 1e3, ms_min=tb * 1e3, runs=len(v), mode="paired")
            if name == "read_ceiling":
                r.update(gbps=x.nbytes / tb / 1e9, m=None, k=None)
            elif name in ("sgemm_ceiling", "gemm_ceiling"):
                r.update(gflops=2.0 * 2048 * 2048 * 4096 / tb / 1e9, n=None, d=None, m=None, k=None)
            else:
                r.update(qps=m / t, qps_best=m / tb, gbps=nbytes[s] / t / 1e9, gflops=2.0 * n * d * m / t / 1e9)
            out.add(r)
        f32 = best.get(("lookalike", "f32"))
        parts = []
        if f32 is not None:
            if m == 1:
                parts.append(f"f32 {x.nbytes / f32 / 1e9:.1f} GB/s = {best[('read_ceiling', 'f32')] / f32:.0%} of read")
            else:
                sg = 2.0 * 2048 * 2048 * 4096 / best[("sgemm_ceiling", "f32")]
                parts.append(
                    f"f32 {2.0 * n * d * m / f32 / 1e9:.0f} GFLOP/s = {2.0 * n * d * m / f32 / sg:.0%} of SGEMM"
                )
            for s in dbs:
                if s != "f32":
                    parts.append(f"{s} {f32 / best[('lookalike', s)]:.2f}x f32")
                if m > 1 and ("gemm_ceiling", s) in best:
                    got = 2.0 * n * d * m / best[("lookalike", s)]
                    ceiling = 2.0 * 2048 * 2048 * 4096 / best[("gemm_ceiling", s)]
                    parts.append(f"{s} {got / 1e9:.0f} GFLOP/s = {got / ceiling:.0%} of {s} GEMM")
            for s in ("f32", "i8"):
                if ("lookalike_group", s) in best:
                    parts.append(f"{s} group/plain time {best[('lookalike_group', s)] / best[('lookalike', s)]:.2f}")
        out.say(f"paired n={n} d={d} m={m} ({args.runs} rounds, best round): " + "; ".join(parts))


def markdown(path: str) -> None:
    """Prints an ``--out`` file (JSON lines) as the Markdown table of ext/README.md (QPS, with GB/s for
    m = 1 and GFLOP/s otherwise, recall@k in brackets when below 1)."""
    rows = harness.read_rows(path)
    ceil = {(r["n"], r["d"]): r["gbps"] for r in rows if r["method"] == "read_ceiling"}
    sgemm = next((r["gflops"] for r in rows if r["method"] == "sgemm_ceiling"), None)
    cols = [
        ("lookalike", "f32"),
        ("lookalike", "f16"),
        ("lookalike", "bf16"),
        ("lookalike", "i8"),
        ("lookalike_rerank", "i8"),
        ("lookalike_group", "f32"),
        ("numpy", "f32"),
        ("faiss_flat", "f32"),
        ("faiss_sq_fp16", "f16"),
        ("faiss_sq_bf16", "bf16"),
        ("faiss_sq_8bit", "i8"),
        ("usearch_exact", "f32"),
    ]
    print(f"SGEMM ceiling: {sgemm:.0f} GFLOP/s" if sgemm else "")
    print("| n | d | m | ceiling | " + " | ".join(f"{m} {s}" for m, s in cols) + " |")
    print("|---" * (4 + len(cols)) + "|")
    keys = sorted({(r["n"], r["d"], r["m"]) for r in rows if r["m"] is not None})
    for n, d, m in keys:
        cells = []
        for method, storage in cols:
            r = next(
                (x for x in rows if (x["n"], x["d"], x["m"], x["method"], x["storage"]) == (n, d, m, method, storage)),
                None,
            )
            if r is None:
                cells.append("-")
                continue
            speed = f"{r['gbps']:.1f} GB/s" if m == 1 else f"{r['gflops']:.0f} GF/s"
            rec = "" if r["recall_at_k"] is None or r["recall_at_k"] >= 0.9995 else f" [{r['recall_at_k']:.3f}]"
            cells.append(f"{r['qps']:.1f} ({speed}){rec}")
        c = ceil.get((n, d))
        print(f"| {n:,} | {d} | {m} | {f'{c:.1f} GB/s' if c else '-'} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = harness.arguments(__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="database sizes")
    parser.add_argument("--d", type=int, nargs="+", default=[384, 1280], help="dimensions")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 64], help="queries per call")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--storage", nargs="+", default=list(STORAGES), choices=STORAGES)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per cell (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="threads for every library; 0 = their defaults")
    parser.add_argument("--rerank", type=int, default=4, help="re-rank candidates per result (x k)")
    parser.add_argument(
        "--peers",
        nargs="+",
        default=["numpy", "faiss_flat", "faiss_sq", "usearch_exact"],
        help="peers to run (numpy faiss_flat faiss_sq usearch_exact); none: --peers none",
    )
    parser.add_argument("--groups", type=int, default=8, help="one-per-group rows: about n / GROUPS groups (0: off)")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="only the round-robin target pairs (ceilings, storage types, one-per-group), --runs rounds",
    )
    parser.add_argument("--markdown", metavar="JSONL", help="print an --out result file as a Markdown table, then exit")
    args = parser.parse_args()
    if args.markdown:
        markdown(args.markdown)
        return
    if args.threads and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        # OpenBLAS and OpenMP read their thread counts when they load: start again with them set.
        os.environ.update(OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.threads:
        native.set_threads(args.threads)
    peers = set(args.peers) - {"none"}

    out = Results(args, show=table_line)
    out.say(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, numpy {np.__version__}, "
        f"simd {native.simd_level()}{' + amx' if cpu_has_amx() else ''}, k={args.k}, "
        f"threads={args.threads or native.get_threads()}, "
        f"runs={args.runs}, load average {os.getloadavg()[0]:.2f}"
    )
    if out.table:
        print(
            f"{'n':>8} {'d':>5} {'m':>4}  {'method':<17} {'store':<5} {'qps':>10} {'ms':>9} {'GB/s':>7} "
            f"{'GFLOP/s':>7} {'recall':>7}"
        )
    start = time.perf_counter()
    ceilings: dict[str, float] = {}
    if not args.paired:
        sg = sgemm_ceiling(args.runs)
        ceilings["sgemm"] = sg["gflops"]
        out.add(sg)
        gemms = narrow_gemms(args.threads or native.get_threads())
        for r in gemm_ceilings({s: fn for s, fn in gemms.items() if s in args.storage}, args.runs):
            ceilings[f"gemm_{r['storage']}"] = r["gflops"]
            out.add(r)
    k = args.k
    for n in args.n:
        for d in args.d:
            rng = np.random.default_rng(n + d)
            centres = harness.centres(rng, n, d)
            x = harness.clustered(rng, n, d, centres)
            queries = {m: harness.clustered(rng, m, d, centres) for m in args.m}
            groups = rng.integers(0, max(1, n // args.groups), n) if args.groups else None
            if args.paired:
                paired(out, args, n, d, x, queries, groups)
                del x
                gc.collect()
                continue
            times, _ = timed(lambda x=x: native.stream_read(x), max(args.runs, 5))
            ceilings["read"] = x.nbytes / min(times) / 1e9  # the best run: a ceiling
            out.add(
                row(
                    "read_ceiling",
                    "f32",
                    n,
                    d,
                    None,
                    None,
                    gbps=ceilings["read"],
                    ms=statistics.median(times) * 1e3,
                    ms_min=min(times) * 1e3,
                    runs=len(times),
                )
            )
            blocks: dict[int, list[Row]] = {m: [] for m in args.m}
            truth: dict[int, np.ndarray] = {}
            group_truth: dict[int, np.ndarray] = {}
            for m, q in queries.items():  # the exact answers
                truth[m] = native.topk(x, q, k)[1]
                if groups is not None:
                    group_truth[m] = native.topk(x, q, k, groups=groups, one_per_group=True)[1]

            def run(
                method: str,
                storage: str,
                nbytes: int,
                fn: Search,
                want: dict[int, np.ndarray],
                n: int = n,
                d: int = d,
                queries: dict[int, np.ndarray] = queries,
                blocks: dict[int, list[Row]] = blocks,
            ) -> None:
                for m, q in queries.items():
                    r, _ = cell(method, storage, n, d, q, k, nbytes, fn, args.runs, want.get(m))
                    blocks[m].append(r)
                    out.add(r)

            for storage in args.storage:
                scales = None
                if storage == "f32":
                    db = x
                elif storage == "f16":
                    db = x.astype(np.float16)
                elif storage == "bf16":
                    db = native.to_bfloat16(x)
                else:
                    db, scales = native.quantize_int8(x)
                nbytes = db.nbytes + (0 if scales is None else scales.nbytes)
                run("lookalike", storage, nbytes, lambda q, db=db, s=scales: native.topk(db, q, k, scales=s), truth)
                if storage != "f32" and args.rerank:
                    c = args.rerank * k
                    run(
                        "lookalike_rerank",
                        storage,
                        nbytes,
                        lambda q, db=db, s=scales, c=c, x=x: native.topk_reranked(
                            db, q, k, full=x, scales=s, candidates=c
                        ),
                        truth,
                    )
                if groups is not None:
                    run(
                        "lookalike_group",
                        storage,
                        nbytes,
                        lambda q, db=db, s=scales, g=groups: native.topk(
                            db, q, k, scales=s, groups=g, one_per_group=True
                        ),
                        group_truth,
                    )
                del db, scales
                gc.collect()
            if "numpy" in peers:
                run("numpy", "f32", x.nbytes, numpy_search(x, k), truth)
            faiss_kinds = (["flat"] if "faiss_flat" in peers else []) + (
                ["fp16", "bf16", "8bit"] if "faiss_sq" in peers else []
            )
            for kind in faiss_kinds:
                index = faiss_index(kind, x)
                if index is None:
                    continue
                width = {"flat": 4, "fp16": 2, "bf16": 2, "8bit": 1}[kind]
                name = "faiss_flat" if kind == "flat" else f"faiss_sq_{kind}"
                storage = {"flat": "f32", "fp16": "f16", "bf16": "bf16", "8bit": "i8"}[kind]
                run(name, storage, n * d * width, lambda q, index=index: index.search(q, k), truth)
                del index
                gc.collect()
            if "usearch_exact" in peers:
                fn = usearch_search(x, k, args.threads)
                if fn is not None:
                    run("usearch_exact", "f32", x.nbytes, fn, truth)
            for m in args.m:
                out.say(f"n={n} d={d} m={m}:")
                ratios(out, blocks[m], ceilings)
            del x
            gc.collect()
    out.say(f"total {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
