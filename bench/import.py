"""Bulk import through the CLI against one SetImage call per image, same photos, same server, one run.

N JPEGs (640 x 480, cut from the scikit-image photos at random crops) are registered twice into
fresh databases: by ``lookalike add --db A DIR`` (streams, images read ahead, one model call
per chunk) and by a loop of ``SetImage`` calls. Prints images/s for both and the ratio.

    .venv/bin/python bench/import.py [--n 300] [--runs 3] [--json]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from lookalike.client import LookalikeClient

    out = harness.Results(args)
    with tempfile.TemporaryDirectory() as tmp, harness.server(snapshot_interval_s=0) as server:
        folder = Path(tmp) / "photos"
        photos = harness.jpeg_folder(folder, args.n, harness.photos(("chelsea", "coffee", "astronaut", "rocket")))
        cli, single = [], []
        for run in range(args.runs):
            with LookalikeClient(server.address) as c:
                c.create_database(f"cli{run}")
                c.create_database(f"one{run}")
            t = time.perf_counter()
            cmd = [sys.executable, "-m", "lookalike", "add", "--db", f"cli{run}", str(folder), "--server",
                   server.address, "--json"]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            elapsed = time.perf_counter() - t
            assert json.loads(proc.stdout)["registered"] == args.n, proc.stderr
            cli.append(args.n / elapsed)
            with LookalikeClient(server.address) as c:
                t = time.perf_counter()
                for p in photos:
                    c.set_image(f"one{run}", p.stem, image=p.read_bytes())
                single.append(args.n / (time.perf_counter() - t))
    rows = [
        out.add(method="lookalike add (CLI, streams)", images_per_s=statistics.median(cli), runs=cli, n=args.n),
        out.add(method="one SetImage per image", images_per_s=statistics.median(single), runs=single, n=args.n),
    ]
    if out.json:
        return
    for r in rows:
        print(f"{r['method']:32} {r['images_per_s']:8.1f} images/s   runs {[round(x, 1) for x in r['runs']]}")
    print(f"ratio: {rows[0]['images_per_s'] / rows[1]['images_per_s']:.2f}x  ({args.n} JPEGs of 640x480)")


if __name__ == "__main__":
    main()
