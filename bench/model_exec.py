"""CPU model execution modes, measured on this machine: eager, channels_last, frozen, bf16 (autocast / frozen).

Times the default model (EfficientNet-Lite0, 224 px) or ``--model FILE`` through the server's own runners
(``lookalike.server.core.embedding.model_exec``) on real photos (the test photos of ``tests/photos.py``), at
several batch sizes, ``--runs`` timed runs of ``--iters`` calls each; reports the median images/s, the
ratio to eager fp32 at the same batch size, and the lowest cosine against eager fp32 over the photos
(issue 11 asks >= 0.999). The model-only images/s is also the ceiling of the whole server on this CPU.

    flock /tmp/lookalike-bench.lock .venv/bin/python bench/model_exec.py [--batches 1,4,8] [--runs 5] [--json]
    # on a busy machine: CPU time per image on one thread (x cores = the ceiling)
    .venv/bin/python bench/model_exec.py --clock cpu --threads 1
    # several model calls side by side (the server's --model-workers) against one call over all cores
    flock /tmp/lookalike-bench.lock .venv/bin/python bench/model_exec.py --workers 1x2,2x1 --batches 1,2,4 --modes bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    import harness
except ModuleNotFoundError:  # imported as bench.model_exec (tests/server/test_model_exec.py), not run
    from bench import harness

DEFAULT_MODES = "eager,channels_last,frozen,bf16_autocast,bf16_all,bf16"


def photo_batch(meta: Any) -> np.ndarray:
    """The test photos (``tests/photos.py``), preprocessed exactly as the server does."""
    from PIL import Image

    from lookalike.modelfile import preprocess

    return np.stack([preprocess(Image.fromarray(arr), meta) for arr in harness.test_photos()])


def main() -> int:
    ap = harness.arguments(__doc__)
    ap.add_argument("--model", type=Path, help="model file (default: the embedded EfficientNet-Lite0)")
    ap.add_argument("--modes", default=DEFAULT_MODES)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per point (the median is reported)")
    ap.add_argument("--iters", type=int, default=5, help="model calls per timed run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = usable cores, as the server)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: images per second; cpu: images per CPU-second of this process (with --threads 1, "
                         "per core), which other jobs on a shared machine disturb far less")  # fmt: skip
    ap.add_argument("--workers", default="",
                    help="instead of the mode table: WORKERSxTHREADS,... concurrent model calls, each on THREADS "
                         "torch threads (wall clock, --seconds each, --runs times interleaved)")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=4.0, help="--workers: seconds per timed run")
    args = ap.parse_args()
    out = harness.Results(args)
    if args.workers:
        return side_by_side(args, out)

    import torch
    from lookalike.server.core.embedding.default_model import default_model_path
    from lookalike.server.core.embedding.model_exec import cosine_rows, make_cpu_runner, native_bf16

    from lookalike.modelfile import load_embedder

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    module, meta = load_embedder(args.model or default_model_path())
    module = module.float()
    photos = photo_batch(meta)
    modes = args.modes.split(",")
    runners = {m: make_cpu_runner(module, m) for m in modes if m != "eager"}
    runners["eager"] = make_cpu_runner(module, "eager")
    reference = runners["eager"].run(photos)
    cosine = {m: float(cosine_rows(r.run(photos), reference).min()) for m, r in runners.items()}
    header = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(),
              "threads": threads, "clock": args.clock, "torch": torch.__version__, "model": meta.model_name,
              "input_size": meta.input_size, "photos": len(photos), "loadavg": os.getloadavg()}  # fmt: skip
    setup(out, header)
    for b in (int(x) for x in args.batches.split(",")):
        batch = np.ascontiguousarray(np.resize(photos, (b, *photos.shape[1:])))
        per_mode: dict[str, list[float]] = {m: [] for m in modes}
        for m in modes:
            for _ in range(3):  # warm up: first calls specialise and allocate
                runners[m].run(batch)
        for _ in range(args.runs):
            for m in modes:  # interleaved, so a shared machine's load hits every mode alike
                began = clock()
                for _ in range(args.iters):
                    runners[m].run(batch)
                per_mode[m].append(b * args.iters / (clock() - began))
        base = statistics.median(per_mode["eager"]) if "eager" in per_mode else None
        for m in modes:
            ips = statistics.median(per_mode[m])
            out.add({"mode": m, "batch": b, "images_per_s": round(ips, 1), "ms_per_call": round(1000 * b / ips, 2),
                     "x_eager": round(ips / base, 2) if base else None, "min_cosine_vs_eager": round(cosine[m], 6),
                     "passes_numerics": cosine[m] >= 0.999, "runs": [round(x, 1) for x in per_mode[m]]})  # fmt: skip
    unit = "images/s" if args.clock == "wall" else "images/CPU-s"
    head = ["mode", "batch", unit, "ms/call", "x eager fp32", "min cosine vs fp32"]
    return table(out, head, ([r["mode"], r["batch"], r["images_per_s"], r["ms_per_call"], r["x_eager"],
                              f"{r['min_cosine_vs_eager']:.5f}"] for r in out.rows[1:]))  # fmt: skip


def setup(out: harness.Results, header: dict[str, Any]) -> None:
    """The first row: what was measured on what (in table mode, a line on stderr)."""
    out.add(setup=header)
    if out.table:
        print(" ".join(f"{k}={v}" for k, v in header.items()), file=sys.stderr, flush=True)


def table(out: harness.Results, head: list[str], rows: Any) -> int:
    """The Markdown table (without --json), then the load average on stderr."""
    out.print_table(harness.markdown(head, rows))
    if out.table:
        print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    return 0


def side_by_side(args: argparse.Namespace, out: harness.Results) -> int:
    """Images/s of W concurrent model calls on T threads each (the server's --model-workers/--torch-threads)."""
    import threading

    import torch
    from lookalike.server.core.embedding.default_model import default_model_path
    from lookalike.server.core.embedding.model_exec import make_cpu_runner, resolve_cpu_mode

    from lookalike.modelfile import load_embedder

    module, meta = load_embedder(args.model or default_model_path())
    photos = photo_batch(meta)
    # the first of --modes, or what the server picks on this CPU (--cpu-exec auto)
    mode = args.modes.split(",")[0] if args.modes != DEFAULT_MODES else resolve_cpu_mode("auto")
    runner = make_cpu_runner(module.float(), mode)
    shapes = [tuple(int(v) for v in w.split("x")) for w in args.workers.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    setup(out, {"mode": mode, "cores": len(os.sched_getaffinity(0)), "photos": len(photos),
                "loadavg": os.getloadavg()})  # fmt: skip

    def measure(workers: int, threads: int, b: int) -> float:
        batch = np.ascontiguousarray(np.resize(photos, (b, *photos.shape[1:])))
        counts = [0] * workers
        ready = threading.Barrier(workers + 1)
        stop = [0.0]

        def loop(i: int) -> None:
            torch.set_num_threads(threads)  # per calling thread, as the server's workers set it
            for _ in range(2):
                runner.run(batch)
            ready.wait()
            while time.perf_counter() < stop[0]:
                runner.run(batch)
                counts[i] += b

        pool = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
        for t in pool:
            t.start()
        stop[0] = time.perf_counter() + 3600
        ready.wait()
        began = time.perf_counter()
        stop[0] = began + args.seconds
        for t in pool:
            t.join()
        return sum(counts) / (time.perf_counter() - began)

    results: dict[tuple[int, int, int], list[float]] = {}
    for _ in range(args.runs):
        for b in batches:
            for w, t in shapes:  # interleaved, so a shared machine's load hits every shape alike
                results.setdefault((w, t, b), []).append(measure(w, t, b))
    single = [statistics.median(v) for (w, _, _), v in results.items() if w == 1]
    best_single = max(single) if single else None
    for (w, t, b), runs in results.items():
        ips = statistics.median(runs)
        out.add({"workers": w, "threads_each": t, "batch": b, "mode": mode, "images_per_s": round(ips, 1),
                 "x_best_one_worker": round(ips / best_single, 2) if best_single else None,
                 "runs": [round(x, 1) for x in runs]})  # fmt: skip
    head = ["workers x threads", "batch", "images/s", "x best single worker"]
    return table(out, head, ([f"{r['workers']} x {r['threads_each']}", r["batch"], r["images_per_s"],
                              r["x_best_one_worker"]] for r in out.rows[1:]))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
