"""Duplicate search (threshold self-join) benchmark: lookalike.native.range_join against FAISS range
search, a blocked numpy self-join and the SGEMM ceiling, on the same sampled query blocks.

A full self-join of n rows costs about n^2 d flops (1M x 384: ~40 min on a 2-core machine), so this script
measures a sample and extrapolates: ``--queries`` rows of the database, taken as whole contiguous blocks of
``--block`` rows spread evenly over the row range, each block joined with upper-triangle semantics (query row
i against every row j > i, as the FindDuplicates operation calls the kernel). Flops are *useful* flops:
2 d per (i, j > i) pair actually examined, summed over the sample; the full self-join's useful flops are
d n (n - 1), and its time is extrapolated from each method's measured rate (said so in the output).

Methods (every one on the same blocks, each run calls all of them in turn, round-robin, so that load from
other processes hits them alike; rows report the median over ``--runs`` and the best run):

- ``lookalike``: ``native.range_join(db, block, t, min_row=block rows)`` (f32, the kernel's thread pool),
  with its exact pruning (a tile stops once a Cauchy-Schwarz bound shows none of its pairs can reach t;
  how much that saves depends on the data and the threshold).
- ``lookalike_dense``: the same with ``prune=False``: every pair scored in full, the kernel's dense rate
  (the one to hold against the SGEMM ceiling).
- ``faiss``: ``faiss.range_search_inner_product``, the kernel ``IndexFlatIP.range_search`` runs, on the
  same rows (the block against ``db[start + 1:]``, no copy; pairs j <= i of the diagonal dropped after).
  ``faiss_index`` (not in the default list): ``IndexFlatIP(db).range_search(block, t)`` as a FAISS user
  writes it, which scores every row (the rectangle), same useful flops.
- ``numpy``: the block @ ``db[start + 1:]``.T in slabs of ``--slab`` rows into a preallocated buffer,
  ``np.nonzero(S >= t)`` (float32, BLAS).
- ``sgemm``: the same matrix products with nothing else: the compute ceiling of these shapes.

Data: ``--n`` clustered float32 unit vectors (``n / 100`` centres, spread 0.6: cluster-mates score about
0.73) with planted near-copies: ``--dup-frac`` of the rows are replaced by a copy of another row plus noise
of relative norm ``--noise`` (score about 0.999). Reported: GFLOP/s of useful flops, lookalike as % of the
SGEMM ceiling, ratios vs FAISS and numpy, pair-set recall of lookalike and FAISS against the numpy answer
(pairs whose numpy score is within 1e-5 of the threshold are ties: neither required nor counted wrong), the
planted pairs found (those whose first row is in the sample), the pairs returned, and lookalike's peak
extra memory (RSS sampled every 2 ms during its calls, above the RSS before; with the bound its buffers have:
the packed queries, one packed row block per thread, 36 bytes per pair returned).

    python bench/dedup.py --n 1000000 --queries 4096 --block 1024 --runs 3
    python bench/dedup.py --n 100000 --queries 16384 --runs 5 --out dedup.jsonl
    python bench/dedup.py --n 200000 --methods lookalike faiss_index --json
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import Results, Row

from lookalike import native

METHODS = ("lookalike", "lookalike_dense", "faiss", "faiss_index", "numpy", "sgemm")
TIE = 1e-5  # pairs this close to the threshold may go either way (float32 rounding of each method)

Pairs = tuple[np.ndarray, np.ndarray]  # (query rows, db rows), global row numbers
Join = Callable[[int, np.ndarray], Pairs | None]  # (block start, block) -> pairs j > i


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def dataset(n: int, d: int, dup_frac: float, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors with planted near-copies; returns (db, planted pairs [p, 2] with i < j)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 100), d), np.float32)
    x = harness.clustered(rng, n, d, centres)
    p = int(n * dup_frac)
    perm = rng.permutation(n)
    src, dst = perm[:p], perm[p : 2 * p]
    copies = x[src] + (noise / np.sqrt(d)) * rng.standard_normal((p, d), np.float32)
    x[dst] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    planted = np.sort(np.stack([src, dst], axis=1), axis=1)
    return x, planted


def block_starts(n: int, queries: int, block: int) -> list[int]:
    """Starts of whole blocks spread evenly over [0, n), each centred in its share of the rows: the query
    sample (block i sits around row (i + 1/2) n / count, so the triangle's long and short rows both count)."""
    count = max(1, min(queries // block, n // block))
    return [min(n - block, max(0, round((i + 0.5) * n / count - block / 2))) for i in range(count)]


def useful_flops(n: int, d: int, starts: list[int], block: int) -> float:
    """2 d per pair (i, j > i) of the sample's rows i."""
    total = 0
    for s in starts:
        rows = np.arange(s, min(s + block, n), dtype=np.int64)
        total += int((n - 1 - rows).sum())
    return 2.0 * d * total


# ----------------------------------------------------------------------------- the methods


def lookalike_join(db: np.ndarray, t: float, max_pairs: int, prune: bool) -> Join:
    def join(s: int, q: np.ndarray) -> Pairs:
        qi, rows, _ = native.range_join(db, q, t, min_row=np.arange(s, s + len(q), dtype=np.int64),
                                        max_pairs=max_pairs, prune=prune)  # fmt: skip
        return qi + s, rows

    return join


def faiss_join(db: np.ndarray, t: float) -> Join | None:
    try:
        import faiss
    except ImportError:
        return None
    d = db.shape[1]

    def join(s: int, q: np.ndarray) -> Pairs:
        y = db[s + 1 :]  # a view: no copy
        res = faiss.RangeSearchResult(len(q))
        faiss.range_search_inner_product(faiss.swig_ptr(q), faiss.swig_ptr(y), d, len(q), len(y), t, res)
        return faiss_pairs(res, len(q), s, s + 1)

    return join


def faiss_index_join(db: np.ndarray, t: float) -> Join | None:
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)

    def join(s: int, q: np.ndarray) -> Pairs:
        lims, _, ids = index.range_search(q, t)
        qi = np.repeat(np.arange(len(q), dtype=np.int64) + s, np.diff(lims).astype(np.int64))
        keep = ids > qi
        return qi[keep], ids[keep]

    return join


def faiss_pairs(res: Any, nq: int, s: int, offset: int) -> Pairs:
    import faiss

    lims = faiss.rev_swig_ptr(res.lims, nq + 1).astype(np.int64)
    ids = faiss.rev_swig_ptr(res.labels, int(lims[-1])).astype(np.int64) + offset
    qi = np.repeat(np.arange(nq, dtype=np.int64) + s, np.diff(lims))
    keep = ids > qi
    return qi[keep], ids[keep]


def numpy_join(db: np.ndarray, t: float, slab: int, block: int, pairs: bool) -> Join:
    """Blocked numpy: S = block @ slab.T into one buffer, then np.nonzero(S >= t) (or nothing: sgemm)."""
    buf = np.empty((block, slab), np.float32)
    t32 = np.float32(t)

    def join(s: int, q: np.ndarray) -> Pairs | None:
        out_q, out_r = [], []
        for a in range(s + 1, db.shape[0], slab):
            y = db[a : a + slab]
            scores = np.matmul(q, y.T, out=buf[: len(q), : len(y)])
            if not pairs:
                continue
            qi, rj = np.nonzero(scores >= t32)
            qi, rj = qi + s, rj + a
            keep = rj > qi
            out_q.append(qi[keep])
            out_r.append(rj[keep])
        if not pairs:
            return None
        if not out_q:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(out_q).astype(np.int64), np.concatenate(out_r).astype(np.int64)

    return join


# ----------------------------------------------------------------------------- measuring


class PeakRss:
    """The largest RSS seen (sampled every 2 ms) while the block runs, minus the RSS before it."""

    def __init__(self) -> None:
        self.base = harness.rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, harness.rss())
            time.sleep(0.002)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, harness.rss())

    @property
    def extra(self) -> int:
        return self.peak - self.base


def buffers_bound(block: int, d: int, threads: int, pairs: int) -> float:
    """Bytes range_join allocates for one call: the packed query block and its tail norms (about m d floats),
    a packed row block of 384 KiB plus tail norms per thread, and 16 + 20 bytes per pair (job buffers, then
    the three output arrays)."""
    checkpoints = (d - 1) // 32
    return 4.0 * block * (d + checkpoints + 2) + threads * (384 * 1024 * (1 + checkpoints / d) + 4096) + 36.0 * pairs


def run_all(join: Join, db: np.ndarray, starts: list[int], block: int) -> tuple[float, Pairs | None]:
    """Time one pass over every block; the pairs found (global rows), or None (sgemm)."""
    out_q, out_r = [], []
    began = time.perf_counter()
    for s in starts:
        got = join(s, db[s : s + block])
        if got is not None:
            out_q.append(got[0])
            out_r.append(got[1])
    took = time.perf_counter() - began
    if not out_q:
        return took, None
    return took, (np.concatenate(out_q), np.concatenate(out_r))


def keys(pairs: Pairs, n: int) -> np.ndarray:
    return np.unique(pairs[0].astype(np.int64) * n + pairs[1].astype(np.int64))


def pair_recall(got: Pairs, truth: np.ndarray, sure: np.ndarray, db: np.ndarray, t: float) -> tuple[float, int]:
    """(recall of the sure pairs, pairs reported that score clearly below t). truth: every numpy pair's
    key; sure: those at t + TIE or above."""
    n = db.shape[0]
    g = keys(got, n)
    recall = float(np.isin(sure, g).mean()) if len(sure) else 1.0
    extra = g[~np.isin(g, truth)]
    i, j = extra // n, extra % n
    exact = np.einsum("ij,ij->i", db[i].astype(np.float64), db[j].astype(np.float64))
    return recall, int((exact < t - TIE).sum())


def table_line(r: Row) -> str:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    return (f"{r['method']:<15} {f(r['ms'], '>10.0f')} {f(r['ms_min'], '>10.0f')} {f(r['gflops'], '>8.1f')} "
            f"{f(r.get('pairs'), '>9')} {f(r.get('recall'), '>7.4f')} {f(r.get('false_pairs'), '>6')} "
            f"{f(r.get('planted_found'), '>8')} {f(r.get('extrapolated_full_min'), '>9.1f')}")  # fmt: skip


def main() -> None:
    parser = harness.arguments(__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="database rows")
    parser.add_argument("--d", type=int, default=384, help="dimension")
    parser.add_argument("--queries", type=int, default=16384, help="query rows sampled (whole blocks)")
    parser.add_argument("--block", type=int, default=1024, help="query rows per range_join call")
    parser.add_argument("--threshold", type=float, default=0.95, help="cosine threshold")
    parser.add_argument("--dup-frac", type=float, default=0.01, help="fraction of rows that are planted copies")
    parser.add_argument("--noise", type=float, default=0.05, help="relative noise norm of a planted copy")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (every method once per round)")
    parser.add_argument("--methods", nargs="+", default=["lookalike", "lookalike_dense", "faiss", "numpy", "sgemm"],
                        choices=METHODS)  # fmt: skip
    parser.add_argument("--slab", type=int, default=16384, help="db rows per numpy / sgemm matrix product")
    parser.add_argument("--max-pairs", type=int, default=10_000_000, help="range_join's max_pairs")
    parser.add_argument("--threads", type=int, default=0, help="threads for every library; 0 = their defaults")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        # OpenBLAS and OpenMP read their thread counts when they load: start again with them set.
        os.environ.update(OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.threads:
        native.set_threads(args.threads)

    out = Results(args, show=table_line, with_load=True)
    n, d, block, t = args.n, args.d, args.block, args.threshold
    out.say(f"{cpu_name()}, {os.cpu_count()} cpus, simd {native.simd_level()}, "
            f"threads {args.threads or native.get_threads()}, numpy {np.__version__}, "
            f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    began = time.perf_counter()
    db, planted = dataset(n, d, args.dup_frac, args.noise, args.seed)
    starts = block_starts(n, args.queries, block)
    sample = len(starts) * block
    flops = useful_flops(n, d, starts, block)
    full_flops = float(d) * n * (n - 1)
    out.say(f"data: {n} x {d} clustered unit vectors, {len(planted)} planted near-copies "
            f"({time.perf_counter() - began:.0f} s); sample: {len(starts)} blocks of {block} rows = {sample} "
            f"queries, {flops / 1e12:.2f} useful TFLOP ({flops / full_flops:.2%} of the full self-join's "
            f"{full_flops / 1e12:.1f} TFLOP); threshold {t}")  # fmt: skip

    joins: dict[str, Join] = {}
    for name in args.methods:
        if name in ("lookalike", "lookalike_dense"):
            joins[name] = lookalike_join(db, t, args.max_pairs, prune=name == "lookalike")
        elif name == "numpy":
            joins[name] = numpy_join(db, t, args.slab, block, pairs=True)
        elif name == "sgemm":
            joins[name] = numpy_join(db, t, args.slab, block, pairs=False)
        else:
            j = faiss_join(db, t) if name == "faiss" else faiss_index_join(db, t)
            if j is None:
                out.say(f"{name}: faiss is not installed (pip install faiss-cpu); skipped")
                continue
            joins[name] = j

    times: dict[str, list[float]] = {name: [] for name in joins}
    found: dict[str, Pairs | None] = {}
    peak_extra = 0
    for r in range(args.runs + 1):  # round 0: warm-up (page faults, pools), not timed
        for name, join in joins.items():
            time.sleep(0.2)  # let the previous library's spinning workers go to sleep
            if name == "lookalike" and r == 1:
                with PeakRss() as mem:
                    took, pairs = run_all(join, db, starts, block)
                peak_extra = mem.extra
            else:
                took, pairs = run_all(join, db, starts, block)
            if r == 0:
                found[name] = pairs
            else:
                times[name].append(took)

    truth = sure = None
    if found.get("numpy") is not None:
        ref = found["numpy"]
        truth = keys(ref, n)
        i, j = truth // n, truth % n
        numpy_scores = np.einsum("ij,ij->i", db[i], db[j])  # float32, as numpy's BLAS rounds
        sure = truth[numpy_scores >= t + TIE]
    in_sample = np.zeros(n, bool)
    for s in starts:
        in_sample[s : s + block] = True
    planted_here = planted[in_sample[planted[:, 0]]]
    planted_keys = planted_here[:, 0] * n + planted_here[:, 1]

    if out.table:
        print(f"{'method':<15} {'ms':>10} {'ms_min':>10} {'GFLOP/s':>8} {'pairs':>9} {'recall':>7} {'false':>6} "
              f"{'planted':>8} {'full min':>9}")  # fmt: skip
    rows: dict[str, Row] = {}
    for name in joins:
        med, best = statistics.median(times[name]), min(times[name])
        row: Row = {"method": name, "storage": "f32", "n": n, "d": d, "queries": sample, "block": block,
                    "threshold": t, "ms": med * 1e3, "ms_min": best * 1e3, "runs": len(times[name]),
                    "gflops": flops / med / 1e9, "gflops_best": flops / best / 1e9,
                    "extrapolated_full_min": full_flops / (flops / med) / 60}  # fmt: skip
        pairs = found[name]
        if pairs is not None:
            row["pairs"] = len(pairs[0])
            row["planted_found"] = int(np.isin(planted_keys, keys(pairs, n)).sum())
            row["planted_in_sample"] = len(planted_keys)
            if truth is not None and sure is not None:
                row["recall"], row["false_pairs"] = pair_recall(pairs, truth, sure, db, t)
        if name == "lookalike":
            row["peak_extra_mb"] = peak_extra / 2**20
            row["buffers_bound_mb"] = buffers_bound(block, d, native.get_threads(), row.get("pairs", 0)) / 2**20
        rows[name] = out.add(row)

    for mine in ("lookalike", "lookalike_dense"):
        if mine not in rows:
            continue
        me = rows[mine]
        parts = []
        if "sgemm" in rows:
            sg = rows["sgemm"]
            parts.append(f"{me['gflops'] / sg['gflops']:.0%} of the SGEMM ceiling (median; best runs "
                         f"{me['gflops_best'] / sg['gflops_best']:.0%})")  # fmt: skip
        for peer in ("faiss", "faiss_index", "numpy"):
            if peer in rows:
                p = rows[peer]
                parts.append(f"{p['ms'] / me['ms']:.2f}x {peer} (best runs {p['ms_min'] / me['ms_min']:.2f}x)")
        out.say(f"{mine}: " + ", ".join(parts))
    ours = rows.get("lookalike")
    if ours is not None:
        out.say(f"lookalike: peak extra RSS {peak_extra / 2**20:.1f} MiB during the sample; its buffers are at "
                f"most {ours['buffers_bound_mb']:.1f} MiB ({ours.get('pairs', 0)} pairs returned in {len(starts)} "
                f"calls of {block} queries; none grows with n)")  # fmt: skip
        out.say(f"EXTRAPOLATED, not measured: the full self-join of {n} x {d} ({full_flops / 1e12:.1f} useful "
                f"TFLOP) at lookalike's median rate {ours['gflops']:.1f} GFLOP/s takes about "
                f"{ours['extrapolated_full_min']:.1f} min on this machine")  # fmt: skip
        if "planted_found" in ours:
            out.say(f"planted near-copies whose first row is in the sample: {ours['planted_in_sample']}, "
                    f"found by lookalike: {ours['planted_found']}")  # fmt: skip
    out.say(f"total {time.perf_counter() - began:.0f} s, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
