"""Reindex in a child process at idle priority against the server's own workers, in interleaved rounds.

``bench/reindex.py`` measures one mode per run; on a shared 2-vCPU machine its idle p99 moves by half between
minutes, so two modes measured minutes apart are not comparable. Here two ``lookalike serve`` (both with
``--model a=builtin,b=PATH``, as in ``bench/reindex.py``), one ``--reindex-worker process`` and one
``--reindex-worker inline``, take turns in each round (the order alternates): each registers the same
``--images`` photos under model ``a``, answers searches by vector at ``--rate`` for ``--idle-seconds`` idle,
then while reindexing them to ``b``. Both servers' background embedders are started by a warm-up reindex
first. Printed per round and as medians: p99 idle and reindexing, their ratio (target 2x), and the reindex
rate over the add rate (target 0.9).

    nice -n 10 .venv/bin/python bench/reindex_ab.py [--images 1024] [--rounds 4] [--rate 40] [--json]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
from reindex import SIZE, Searcher, inputs, register

MODES = ("process", "inline")


def main() -> int:
    ap = harness.arguments(__doc__)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rate", type=float, default=40.0, help="searches by vector per second")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    args = ap.parse_args()
    out = harness.Results(args, with_load=True)
    from lookalike.client import LookalikeClient

    with tempfile.TemporaryDirectory(prefix="lookalike-bench-reindex-ab-") as tmp:
        root = Path(tmp)
        arrays, queries, model_b = inputs(root)
        warm = [f.read_bytes() for f in harness.jpeg_folder(root / "warm", 64, arrays, SIZE, seed=999_999)]
        servers = {m: harness.ServeProcess("--data-dir", str(root / m), "--model", f"a=builtin,b={model_b}",
                                           "--default-model", "a", "--reindex-worker", m) for m in MODES}  # fmt: skip
        try:
            for srv in servers.values():
                with LookalikeClient(srv.address, timeout=600) as c:
                    c.create_database("warm", keep="thumbnail")
                    register(srv.address, "warm", warm)
                    c.wait_done(c.reindex_database("warm", "b").name)
            for r in range(args.rounds):
                images = [f.read_bytes() for f in harness.jpeg_folder(root / f"jpeg-{r}", args.images, arrays, SIZE,
                                                                      seed=r)]  # fmt: skip
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    srv, db = servers[mode], f"cat{r}"
                    with LookalikeClient(srv.address, timeout=600) as c:
                        c.create_database(db, keep="thumbnail", model="a")
                        add_s = register(srv.address, db, images)
                        with Searcher(srv.address, db, args.rate, "vector", queries, b"") as idle:
                            time.sleep(args.idle_seconds)
                        with Searcher(srv.address, db, args.rate, "vector", queries, b"") as busy:
                            began = time.perf_counter()
                            final = c.wait_done(c.reindex_database(db, "b").name)
                            reindex_s = time.perf_counter() - began
                    if final.state != 2 or not final.reindex.switched:
                        raise RuntimeError(f"{mode}: reindex of {db} ended {final.state}: {final.error}")
                    row = {"round": r, "mode": mode, "images": args.images, **idle.summary("idle"),
                           **busy.summary("reindex"), "rate_vs_add": round(add_s / reindex_s, 3)}  # fmt: skip
                    row = out.add(row, p99_vs_idle=round(row["reindex_p99_ms"] / row["idle_p99_ms"], 2))
                    out.say(f"round {r} {mode}: p99 idle {row['idle_p99_ms']} ms, reindexing {row['reindex_p99_ms']} "
                            f"ms (x{row['p99_vs_idle']}), failed {row['reindex_failed']}, reindex/add "
                            f"x{row['rate_vs_add']}; load {row['load']}")  # fmt: skip
        finally:
            for srv in servers.values():
                srv.stop()
    rows = [r for r in out.rows if "round" in r]
    table = []
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]

        def med(key: str, mine: list = mine) -> float:
            return round(statistics.median(r[key] for r in mine), 3)

        summary = out.add(summary="median", mode=mode, rounds=len(mine), idle_p99_ms=med("idle_p99_ms"),
                          reindex_p99_ms=med("reindex_p99_ms"), p99_vs_idle=med("p99_vs_idle"),
                          worst_p99_vs_idle=max(r["p99_vs_idle"] for r in mine), rate_vs_add=med("rate_vs_add"),
                          failed=sum(r["reindex_failed"] + r["idle_failed"] for r in mine))  # fmt: skip
        table.append([mode, summary["idle_p99_ms"], summary["reindex_p99_ms"], summary["p99_vs_idle"],
                      summary["worst_p99_vs_idle"], summary["rate_vs_add"], summary["failed"]])  # fmt: skip
    out.print_table(harness.markdown(["mode", "p99 ms idle", "p99 ms reindexing", "p99 x idle", "worst round",
                                      "reindex / add", "failed"], table))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
