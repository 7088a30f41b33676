"""Attribute-filtered search against unfiltered, and a writer's latency beside filtered searchers.

One in-memory database of ``--n`` random unit vectors (d ``--d``), each with ``color`` (one of
``--values``, so a filter on it keeps 1/values of the rows) and ``lookalike.sha256`` (unique per
row, as for images registered from bytes). Reported, as ratios to the unfiltered search of the
same run: the p50 of a filter on ``color``, on the digest (one row), on both keys, and the old
Python scan under the database lock (``scan``, re-enacted here) at a few queries; the first
filter's one-off column build per key (time and resident memory); then a writer's SetImages
p50 alone, beside ``--searchers`` unfiltered searchers, beside as many filtered ones (the index),
and beside as many old-style scans (``--scan-writer``). Each writer row also gives the writer
thread's CPU time per write (p50): equal to the wall time, the writer did not wait (for the GIL or
a lock) but ran slower. The last row is the machine's own floor for that: no other thread, each
write right after a search in the same thread, so it starts with the caches the scan left.
``--hnsw N`` gives the database an HNSW graph from N images (waited for) so the graph tier answers
instead of the exact scan.

    .venv/bin/python bench/filtered.py --n 1000000 --d 384 [--values 10] [--seconds 10] [--json]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np


def fill(catalog: Any, n: int, d: int, values: int, batch: int = 20_000) -> None:
    rng = np.random.default_rng(0)
    for a in range(0, n, batch):
        m = min(batch, n - a)
        v = rng.standard_normal((m, d), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        reqs = [(f"g{i % 1000}", i, "", {"color": f"c{i % values}", "lookalike.sha256": f"{i * 2654435761:064x}"})
                for i in range(a, a + m)]  # fmt: skip
        catalog.set_images("f", reqs, v)


def scan_search(db: Any, q: np.ndarray, k: int, where: dict[str, str]) -> Any:
    """The search before the filter index: a Python scan of every row's attributes under the lock."""
    with db.lock:
        n = db._intra.n
        live = db._live[:n]
        rows = [r for r, a in db._attrs.items() if all(a.get(key) == v for key, v in where.items())]
        mask = np.zeros(n, np.uint8)
        mask[rows] = 1
        mask &= live
        pinned = db.index.pin()
    return db.index.search(q, k, mask, n, None, rows=pinned)


def p50_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def writer_p50(catalog: Any, d: int, seconds: float, searchers: int, search: Callable[[np.ndarray], object] | None,
               queries: np.ndarray, inline: bool = False) -> tuple[float, float, int]:  # fmt: skip
    """p50 ms (wall, thread CPU) of one-image SetImages calls for ``seconds`` while ``searchers`` threads
    loop ``search``; ``inline``: no threads, one ``search`` in the writer's thread before each write."""
    stop = threading.Event()
    done = [0]

    def searcher(w: int) -> None:
        i = w
        while not stop.is_set():
            search(queries[i % len(queries)])  # type: ignore[misc]
            i += searchers
            done[0] += 1

    threads = [threading.Thread(target=searcher, args=(w,)) for w in range(searchers if search else 0)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(5)
    lat, cpu = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = rng.standard_normal((1, d), dtype=np.float32)
        v /= np.linalg.norm(v)
        if inline:
            search(queries[len(lat) % len(queries)])  # type: ignore[misc]
        else:
            time.sleep(0.002)  # a steady writer, not a flood
        c0, t0 = time.thread_time(), time.perf_counter()
        catalog.set_images("f", [("writer", None, "", {"color": "c1"})], v)
        lat.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    stop.set()
    for t in threads:
        t.join()
    return 1e3 * statistics.median(lat), 1e3 * statistics.median(cpu), done[0]


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--values", type=int, default=10, help="distinct colors (a color filter keeps 1/values)")
    ap.add_argument("--storage", default="f32", choices=["f32", "f16", "bf16", "i8"])
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="latency rounds; the median round is reported")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0, help="per writer phase")
    ap.add_argument("--searchers", type=int, default=4)
    ap.add_argument("--scan-writer", action="store_true", help="also the writer beside old-style scans (slow)")
    ap.add_argument("--hnsw", type=int, default=0, help="HNSW graph threshold (0: exact scan only)")
    ap.add_argument("--durable", action="store_true", help="log writes to a temporary data directory (fsync batch)")
    args = ap.parse_args()
    res = harness.Results(args, show=harness.key_values, with_load=True)

    from lookalike.server.core.backends.builtin.catalog import Catalog
    from lookalike.server.core.backends.builtin.hnsw import HnswSettings
    from lookalike.server.core.backends.builtin.persistence import Persistence

    workdir = tempfile.TemporaryDirectory(prefix="lookalike-filtered-")  # removed at exit
    persistence = Persistence(Path(workdir.name)) if args.durable else None
    catalog = Catalog(args.d, {"name": "bench", "digest": "x"}, persistence, hnsw=HnswSettings(threshold=0))
    if persistence is not None:
        catalog.recover()
    catalog.create("f", storage=args.storage)
    t = time.perf_counter()
    fill(catalog, args.n, args.d, args.values)
    db = catalog.get("f")
    res.say(
        f"filled {args.n} rows in {time.perf_counter() - t:.1f}s; RssAnon {harness.proc_status()['RssAnon'] >> 20} MiB"
    )
    if args.hnsw:  # built after the fill, on every core (a graph there from the start adds rows one set at a time)
        db.hnsw_settings = HnswSettings(threshold=args.hnsw)
        with db.lock:
            db._maybe_build_graph()
        while not (db.hnsw is not None and db.hnsw.ready):
            time.sleep(0.5)
        res.say(f"graph ready after {time.perf_counter() - t:.1f}s")
    queries = harness.unit_vectors(1, args.queries, args.d)
    digest = f"{3 * 2654435761:064x}"
    k = args.k

    # the first filter on a key builds its column: time it, and the memory it keeps
    for key, value in (("color", "c3"), ("lookalike.sha256", digest)):
        before = harness.proc_status()["RssAnon"]
        t = time.perf_counter()
        db.search_tier(queries[0], k, where={key: value})
        ms = 1e3 * (time.perf_counter() - t)
        col = db._filters.columns[key]
        # the value strings are the attribute dicts' own; the dict's table and the int codes are the index's
        kept = col.codes.nbytes + sys.getsizeof(col.values) + 32 * max(0, len(col.values) - 256)
        res.add(what="first filter (column build)", key=key, ms=round(ms, 1), distinct=len(col.values),
                index_mib=round(kept / 2**20, 1), bytes_per_row=round(kept / args.n, 1),
                rss_delta_mib=round((harness.proc_status()["RssAnon"] - before) / 2**20, 1))  # fmt: skip

    wheres: dict[str, dict[str, str] | None] = {
        "unfiltered": None,
        f"color (1/{args.values})": {"color": "c3"},
        "digest (1 row)": {"lookalike.sha256": digest},
        "color and digest": {"color": "c3", "lookalike.sha256": digest},
    }
    modes = {mode: (lambda q, w=where: db.search_tier(q, k, where=w)) for mode, where in wheres.items()}
    rounds: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits every mode alike
        for mode, fn in modes.items():
            rounds[mode].append(p50_ms(fn, queries))
    base = statistics.median(rounds["unfiltered"])
    for mode in modes:
        p50 = statistics.median(rounds[mode])
        tier = db.search_tier(queries[0], k, where=wheres[mode])[2]
        res.add(what="search", mode=mode, tier=tier, p50_ms=round(p50, 2), ratio=round(p50 / base, 2))
    scan = p50_ms(lambda q: scan_search(db, q, k, {"color": "c3"}), queries[:3])
    res.add(what="search", mode="color, old scan under the lock", p50_ms=round(scan, 2), ratio=round(scan / base, 2))

    alone, alone_cpu, _ = writer_p50(catalog, args.d, args.seconds, 0, None, queries)
    res.add(what="writer", beside="nothing", p50_ms=round(alone, 3), ratio=1.0, cpu_p50_ms=round(alone_cpu, 3))
    phases: list[tuple[str, Callable[[np.ndarray], object]]] = [
        ("unfiltered searchers", modes["unfiltered"]),
        ("filtered searchers (index)", modes[f"color (1/{args.values})"]),
    ]
    if args.scan_writer:
        phases.append(("filtered searchers (old scan)", lambda q: scan_search(db, q, k, {"color": "c3"})))
    for name, fn in phases:
        p50, cpu, searches = writer_p50(catalog, args.d, args.seconds, args.searchers, fn, queries)
        res.add(what="writer", beside=f"{args.searchers} {name}", p50_ms=round(p50, 3), ratio=round(p50 / alone, 2),
                cpu_p50_ms=round(cpu, 3), searches=searches)  # fmt: skip
    p50, cpu, _ = writer_p50(catalog, args.d, args.seconds, 0, modes[f"color (1/{args.values})"], queries, inline=True)
    res.add(what="writer", beside="no thread; a filtered search before each write, same thread", p50_ms=round(p50, 3),
            ratio=round(p50 / alone, 2), cpu_p50_ms=round(cpu, 3))  # fmt: skip


if __name__ == "__main__":
    main()
