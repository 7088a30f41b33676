"""Start-up on a saved data directory: how soon the server answers, and how soon its graph does.

On the data directory ``bench/scale.py`` leaves (``--work``), alternated ``--runs`` times, the page cache
dropped before each start where this process may (root: ``/proc/sys/vm/drop_caches``; otherwise said):

- in-process ``Catalog.recover()`` three ways: ``inline`` (the graph loaded and every file checked before
  it returns, as before 2026-12-07: emulated by loading inside ``HnswIndex.loading``), ``graph`` (the graph
  on its thread, every file checked first: ``--snapshot-check start``), ``background`` (the graph and the
  float32 copy's check on threads: the default). Rows: recover_s, first_search_s (and the tier that
  answered), graph_s (first answer by the graph), checked_s (the deferred check done);
- ``lookalike serve`` as a process (default settings): ready_s (``lookalike: ready``), first_search_s,
  graph_s, over gRPC.

    flock /tmp/lookalike-bench.lock .venv/bin/python bench/startup.py --work /tmp/scale1m --runs 3
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np

MODES = ("inline", "graph", "background")


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def in_process(data: Path, mode: str, query: np.ndarray) -> dict[str, Any]:
    """One start in a child interpreter (a fresh process each time, as a server start is)."""
    code = f"""
import json, sys, time
import numpy as np
from pathlib import Path
from lookalike.server.core.backends.builtin.catalog import Catalog
from lookalike.server.core.backends.builtin.hnsw import HnswIndex, HnswSettings
from lookalike.server.core.backends.builtin.persistence import MANIFEST, Persistence
from lookalike.server.storage.segments import get_manifest
if {mode!r} == "inline":
    HnswIndex.loading = classmethod(lambda cls, dim, settings, seq, read, name: HnswIndex.load(read(), settings, seq))
p = Persistence(Path({str(data)!r}), check_in_background={mode == "background"})
meta = next(iter(get_manifest(p.local, MANIFEST)["databases"].values()))["meta"]
q = np.array({query.tolist()!r}, np.float32)
t0 = time.perf_counter()
catalog = Catalog(int(meta["dimension"]), meta["model"], p, hnsw=HnswSettings(threshold=1, dtype="i8"))
catalog.recover()
row = {{"recover_s": time.perf_counter() - t0}}
db = catalog.get(meta["name"])
_, _, tier = db.search_tier(q, 10)
row["first_search_s"], row["first_tier"] = time.perf_counter() - t0, tier
while tier != "hnsw":
    time.sleep(0.01)
    _, _, tier = db.search_tier(q, 10)
row["graph_s"] = time.perf_counter() - t0
db.checked.wait()
row["checked_s"] = time.perf_counter() - t0
print(json.dumps(row))
catalog.close(snapshot=False)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def served(work: Path, query: np.ndarray, d: int) -> dict[str, Any]:
    from lookalike.client import LookalikeClient

    t0 = time.perf_counter()
    server = harness.ServeProcess("--model", str(work / f"model{d}.pt"), "--data-dir", str(work / "data"),
                                  "--snapshot-interval", "0", "--threads", "2", timeout=1800)  # fmt: skip
    row: dict[str, Any] = {"ready_s": server.ready_s}
    try:
        with LookalikeClient(server.address, timeout=600) as c:
            waited = harness.until_graph(c, "scale", query, t0)
        row.update(first_search_s=waited["first_search_s"], first_tier=waited["first_index"], graph_s=waited["graph_s"])
    finally:
        server.stop(timeout=600)
    return row


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--work", type=Path, required=True, help="a bench/scale.py --work directory")
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    out = harness.Results(args, show=lambda r: json.dumps(r))
    query = np.random.default_rng(0).standard_normal(args.d).astype(np.float32)
    query /= np.linalg.norm(query)
    rows: dict[str, list[dict[str, Any]]] = {}
    for run in range(args.runs):
        for mode in (*MODES, "served"):
            cold = drop_caches()
            row = served(args.work, query, args.d) if mode == "served" else in_process(args.work / "data", mode, query)
            row = {"run": run, "mode": mode, "cache_dropped": cold, **{k: round(v, 2) if isinstance(v, float) else v
                                                                       for k, v in row.items()}}  # fmt: skip
            rows.setdefault(mode, []).append(row)
            out.add(row)
    for mode, got in rows.items():
        keys = [k for k in got[0] if k.endswith("_s")]
        out.add(mode=mode, median={k: round(statistics.median(r[k] for r in got), 2) for k in keys},
                low={k: min(r[k] for r in got) for k in keys},
                high={k: max(r[k] for r in got) for k in keys})  # fmt: skip


if __name__ == "__main__":
    main()
