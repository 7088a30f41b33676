"""Reindex: re-embedding throughput against registration throughput, and searches while a reindex runs.

Two models of equal cost: ``a`` is the embedded default (EfficientNet-Lite0, ``--model a=builtin``), ``b`` the
same file with one bias (``net._bn1.bias``) moved by 1e-3, written with ``lookalike.modelfile.save_embedder``
under another model name (a reindex to the same weights is refused). One ``lookalike serve`` child process
serves both (``--model a=builtin,b=PATH --default-model a``); a second one serves the default model alone,
as a catalogue is usually registered (leave it out with ``--no-single``). Each run, on its own
``--images`` 640x480 JPEG photos (random 3/4 crops of the tests' photos):

1. add: the images are registered into a ``keep=thumbnail`` database by ``client.bulk_set`` streams of
   ``BulkItem`` s as ``lookalike add`` sends them (2 streams of 64): on the one-model server, then on the
   two-model server under model ``a`` (images/s from the client);
2. idle searches: a searcher thread sends Search (by vector, or ``--query image``: by a JPEG) at
   ``--rate`` per second for ``--idle-seconds`` on the idle two-model server, before the reindex and again
   after it (the idle p99 is over both windows: one window's p99 moved by half between minutes; each
   window's own p99 is printed too);
3. reindex: ``client.reindex_database(db, "b")`` while the same searcher runs (model b's background embedding
   process, ``--reindex-worker process``, was started by a first reindex of the warm-up database: its start,
   a few seconds, is printed apart), timed to ``wait_done``
   (images/s = reindexed_count / seconds; the operation's own create/update times are also given).

Issue targets, checked per run and on the medians: reindex >= 90% of the add rate (the same two-model
server; also shown against the one-model server's add rate), and while reindexing no failed search and
p99 within 2x of the idle p99. A server with two models shares its model workers between them, so each
model gets half of them (``split_workers`` in ``server/app.py``). The machine may be shared: read the ratios.

    nice -n 10 .venv/bin/python bench/reindex.py [--images 512] [--runs 3] [--query vector] [--rate 40]
        [--reindex-worker process|inline] [--json]
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness
import numpy as np

SIZE = (640, 480)
PERTURBED = "net._bn1.bias"


def perturbed_model(path: Path, delta: float = 1e-3) -> Path:
    """The default model's file with one bias moved by ``delta``: the same cost, another digest and model name."""
    import torch
    from lookalike.server.app import builtin_model
    from lookalike.server.config import ServerConfig

    from lookalike.modelfile import load_embedder, save_embedder

    module, meta = load_embedder(builtin_model(ServerConfig(port=0, persist=False)))
    params = dict(module.named_parameters())
    name = PERTURBED if PERTURBED in params else [n for n in params if n.endswith("bias")][-1]
    with torch.no_grad():
        params[name].add_(delta)
    return save_embedder(module, path, dataclasses.replace(meta, model_name=f"{meta.model_name}-perturbed"))


def inputs(root: Path) -> tuple[list[np.ndarray], np.ndarray, Path]:
    """The photos to crop JPEGs from, 64 query vectors of the default model's dimension, and model b's file."""
    return harness.test_photos(), harness.unit_vectors(0, 64, 1280), perturbed_model(root / "b.pt")


def register(address: str, db: str, images: list[bytes], batch: int = 64, streams: int = 2) -> float:
    """Send ``images`` as ``lookalike add`` does (``streams`` concurrent streams of ``batch``); seconds taken."""
    from lookalike.client import BulkItem, LookalikeClient

    with LookalikeClient(address, timeout=600) as c:

        def send(start: int) -> None:
            part = images[start : start + batch]
            r = c.bulk_set(db, (BulkItem(f"g{start + k}", image=d, client_ref=f"p{start + k}")
                                for k, d in enumerate(part)))  # fmt: skip
            if r.failures or r.succeeded_count != len(part):
                raise RuntimeError(f"{db}: {len(r.failures)} failures ({r.failures[0].reason if r.failures else ''})")

        began = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            list(pool.map(send, range(0, len(images), batch)))
        return time.perf_counter() - began


class Searcher:
    """A thread sending Search at a steady ``rate`` (paced to a schedule; a late call goes at once) until stopped."""

    def __init__(self, address: str, db: str, rate: float, query: str, vectors: np.ndarray, image: bytes) -> None:
        self.address, self.db, self.rate, self.query = address, db, rate, query
        self.vectors, self.image = vectors, image
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        from lookalike.client import LookalikeClient

        with LookalikeClient(self.address, timeout=60) as c:
            began, i = time.perf_counter(), 0
            while not self.stop_event.is_set():
                wait = began + i / self.rate - time.perf_counter()
                if wait > 0 and self.stop_event.wait(wait):
                    break
                kw: dict[str, Any] = ({"image": self.image} if self.query == "image"
                                      else {"vector": self.vectors[i % len(self.vectors)].tolist()})  # fmt: skip
                t = time.perf_counter()
                try:
                    r = c.search(self.db, top_k=10, **kw)
                    if not r.hits:
                        raise RuntimeError("no hits")
                    self.latencies.append(time.perf_counter() - t)
                except Exception as exc:  # counted: the target is no failed search
                    self.errors.append(str(exc)[:200])
                i += 1

    def __enter__(self) -> Searcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()

    def summary(self, prefix: str) -> dict[str, Any]:
        p50, p99 = harness.p50_p99(self.latencies)
        return {f"{prefix}_searches": len(self.latencies), f"{prefix}_failed": len(self.errors),
                f"{prefix}_p50_ms": round(p50, 2), f"{prefix}_p99_ms": round(p99, 2),
                f"{prefix}_first_error": self.errors[0] if self.errors else None}  # fmt: skip


def seconds_between(a: Any, b: Any) -> float:
    return b.seconds - a.seconds + (b.nanos - a.nanos) / 1e9


def main() -> int:
    ap = harness.arguments(__doc__)
    ap.add_argument("--images", type=int, default=512, help="images per run")
    ap.add_argument("--runs", type=int, default=3)
    query_help = "search by a vector (the search path alone) or by a JPEG (embedded: competes for the CPU)"
    ap.add_argument("--query", choices=("vector", "image"), default="vector", help=query_help)
    ap.add_argument("--rate", type=float, default=0.0, help="searches per second (default 40 by vector, 2 by image)")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="searches on the idle server, per run")
    ap.add_argument("--no-single", action="store_true", help="leave out the one-model server's add")
    worker_help = "the two-model server's --reindex-worker (inline: the reindex on the server's own workers)"
    ap.add_argument("--reindex-worker", choices=("process", "inline"), default="process", help=worker_help)
    args = ap.parse_args()
    rate = args.rate or (40.0 if args.query == "vector" else 2.0)
    out = harness.Results(args, with_load=True)

    from lookalike.client import LookalikeClient

    with tempfile.TemporaryDirectory(prefix="lookalike-bench-reindex-") as tmp:
        root = Path(tmp)
        arrays, queries, model_b = inputs(root)
        sets = [[f.read_bytes() for f in harness.jpeg_folder(root / f"jpeg-{r}", args.images, arrays, SIZE, seed=r)]
                for r in range(args.runs)]  # fmt: skip
        warm = [f.read_bytes() for f in harness.jpeg_folder(root / "warm", 64, arrays, SIZE, seed=999_999)]
        query_image = harness.jpeg(arrays[0], SIZE)
        two = harness.ServeProcess("--data-dir", str(root / "two"), "--model", f"a=builtin,b={model_b}",
                                   "--default-model", "a", "--reindex-worker", args.reindex_worker)  # fmt: skip
        one = None if args.no_single else harness.ServeProcess("--data-dir", str(root / "one"))
        try:
            with LookalikeClient(two.address, timeout=600) as c:
                for srv in [two] + ([one] if one else []):  # warm up both models and the thumbnail encoder
                    with LookalikeClient(srv.address) as w:
                        w.create_database("warm", keep="thumbnail")
                        register(srv.address, "warm", warm)
                c.create_database("warm-b", keep="thumbnail", model="b")
                register(two.address, "warm-b", warm[:32])
                began = time.perf_counter()  # the first reindex starts model b's background process (kept warm)
                first = c.wait_done(c.reindex_database("warm", "b").name)
                out.say(f"first reindex ({first.reindex.reindexed_count} images, starts the background embedder): "
                        f"{time.perf_counter() - began:.2f} s")  # fmt: skip
                for r in range(args.runs):
                    db = f"cat{r}"
                    row: dict[str, Any] = {"run": r, "images": args.images, "query": args.query, "rate": rate,
                                           "reindex_worker": args.reindex_worker}  # fmt: skip
                    if one is not None:
                        with LookalikeClient(one.address) as w:
                            w.create_database(db, keep="thumbnail")
                        row["add_one_model_per_s"] = round(args.images / register(one.address, db, sets[r]), 2)
                    c.create_database(db, keep="thumbnail", model="a")
                    row["add_per_s"] = round(args.images / register(two.address, db, sets[r]), 2)
                    with Searcher(two.address, db, rate, args.query, queries, query_image) as idle:
                        time.sleep(args.idle_seconds)
                    with Searcher(two.address, db, rate, args.query, queries, query_image) as busy:
                        began = time.perf_counter()
                        op = c.reindex_database(db, "b")
                        final = c.wait_done(op.name)
                        seconds = time.perf_counter() - began
                    row.update(busy.summary("reindex"))
                    with Searcher(two.address, db, rate, args.query, queries, query_image) as after:
                        time.sleep(args.idle_seconds)  # the same database name, now the reindexed one
                    row.update(idle_before_p99_ms=idle.summary("x")["x_p99_ms"],
                               idle_after_p99_ms=after.summary("x")["x_p99_ms"])  # fmt: skip
                    idle.latencies += after.latencies  # idle: both windows, before and after the reindex
                    idle.errors += after.errors
                    row.update(idle.summary("idle"))
                    if final.state != 2 or not final.HasField("reindex"):  # OPERATION_STATE_SUCCEEDED
                        raise RuntimeError(f"reindex {op.name} ended {final.state}: {final.error}")
                    res = final.reindex
                    row.update(reindex_s=round(seconds, 3),
                               reindex_op_s=round(seconds_between(final.create_time, final.update_time), 3),
                               reindexed=res.reindexed_count, reindex_per_s=round(res.reindexed_count / seconds, 2),
                               missing=res.missing_count, concurrent_writes=res.concurrent_writes,
                               overlap_at_10=round(res.overlap_at_10, 4),
                               same_nearest_group=round(res.same_nearest_group, 4), switched=res.switched,
                               model_now=c.get_database(db).model_name)  # fmt: skip
                    row["reindex_vs_add"] = round(row["reindex_per_s"] / row["add_per_s"], 3)
                    if one is not None:
                        row["reindex_vs_add_one_model"] = round(row["reindex_per_s"] / row["add_one_model_per_s"], 3)
                    row["p99_vs_idle"] = round(row["reindex_p99_ms"] / row["idle_p99_ms"], 2)
                    row = out.add(row)
                    out.say(f"run {r}: add {row['add_per_s']}/s (one model {row.get('add_one_model_per_s', '-')}/s), "
                            f"reindex {row['reindex_per_s']}/s (x{row['reindex_vs_add']}); search p99 idle "
                            f"{row['idle_p99_ms']} ms (before {row['idle_before_p99_ms']}, "
                            f"after {row['idle_after_p99_ms']}), "
                            f"reindexing {row['reindex_p99_ms']} ms, "
                            f"failed {row['reindex_failed']}; load {row['load']}")  # fmt: skip
        finally:
            two.stop()
            if one is not None:
                one.stop()

    rows = [r for r in out.rows if "run" in r]

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3) if rows and key in rows[0] else float("nan")

    summary = out.add(summary="median", runs=len(rows), images=args.images, query=args.query, rate=rate,
                      **{k: med(k) for k in ("add_one_model_per_s", "add_per_s", "reindex_per_s", "reindex_vs_add",
                                             "reindex_vs_add_one_model", "idle_p50_ms", "idle_p99_ms",
                                             "reindex_p50_ms", "reindex_p99_ms", "p99_vs_idle", "overlap_at_10")},
                      failed_searches=sum(r["reindex_failed"] + r["idle_failed"] for r in rows))  # fmt: skip
    head = ["run", "add/s (one model)", "add/s (two models)", "reindex/s", "reindex/add", "reindex/add (one model)",
            "search p50 ms idle / reindexing", "p99 ms idle / reindexing", "p99 x idle", "failed",
            "overlap@10"]  # fmt: skip
    out.print_table(harness.markdown(head, ([r["run"], r.get("add_one_model_per_s", "-"), r["add_per_s"],
                                             r["reindex_per_s"], r["reindex_vs_add"],
                                             r.get("reindex_vs_add_one_model", "-"),
                                             f"{r['idle_p50_ms']} / {r['reindex_p50_ms']}",
                                             f"{r['idle_p99_ms']} / {r['reindex_p99_ms']}", r["p99_vs_idle"],
                                             r["reindex_failed"], r["overlap_at_10"]] for r in rows)))  # fmt: skip
    fast = summary["reindex_vs_add"] >= 0.9
    calm = summary["failed_searches"] == 0 and summary["p99_vs_idle"] <= 2.0
    single = "" if args.no_single else f"; against the one-model server's add: x{summary['reindex_vs_add_one_model']}"
    out.say(f"issue target reindex >= 90% of add (same server): {'met' if fast else 'NOT met'} "
            f"(median x{summary['reindex_vs_add']}{single})")  # fmt: skip
    out.say(f"issue target no failed search, p99 within 2x of idle (search by {args.query}, {rate}/s): "
            f"{'met' if calm else 'NOT met'} (failed {summary['failed_searches']}, median p99 "
            f"x{summary['p99_vs_idle']}, worst run x{max(r['p99_vs_idle'] for r in rows)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
