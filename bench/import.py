"""Bulk import through the CLI against one SetImage call per image, same photos, same server, one run.

N JPEGs (640 x 480, cut from the scikit-image photos at random crops) are registered twice into
fresh databases: by ``lookalike add --db A DIR`` (streams, images read ahead, one model call
per chunk) and by a loop of ``SetImage`` calls. Prints images/s for both and the ratio.

    .venv/bin/python bench/import.py [--n 300] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_photos(folder: Path, n: int) -> list[Path]:
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    sources = [getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")]
    out = []
    for i in range(n):
        arr = sources[i % len(sources)][..., :3]
        h, w = arr.shape[:2]
        y, x = int(rng.integers(0, h // 4)), int(rng.integers(0, w // 4))
        img = Image.fromarray(arr[y : y + 3 * h // 4, x : x + 3 * w // 4]).resize((640, 480))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        path = folder / f"p{i:05d}.jpg"
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from lookalike.client import LookalikeClient
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp), args.n)
        server = create_server(ServerConfig(port=0, data_dir=Path(tmp) / "data", snapshot_interval_s=0))
        try:
            cli, single = [], []
            for run in range(args.runs):
                with LookalikeClient(server.address) as c:
                    c.create_database(f"cli{run}")
                    c.create_database(f"one{run}")
                t = time.perf_counter()
                cmd = [sys.executable, "-m", "lookalike", "add", "--db", f"cli{run}", tmp, "--server", server.address]
                proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True)
                elapsed = time.perf_counter() - t
                assert json.loads(proc.stdout)["succeeded"] == args.n, proc.stderr
                cli.append(args.n / elapsed)
                with LookalikeClient(server.address) as c:
                    t = time.perf_counter()
                    for p in photos:
                        c.set_image(f"one{run}", p.stem, image=p.read_bytes())
                    single.append(args.n / (time.perf_counter() - t))
        finally:
            server.stop(0, snapshot=False)
    rows = [
        {"method": "lookalike add (CLI, streams)", "images_per_s": statistics.median(cli), "runs": cli},
        {"method": "one SetImage per image", "images_per_s": statistics.median(single), "runs": single},
    ]
    if args.json:
        for r in rows:
            print(json.dumps({**r, "n": args.n}))
        return
    for r in rows:
        print(f"{r['method']:32} {r['images_per_s']:8.1f} images/s   runs {[round(x, 1) for x in r['runs']]}")
    print(f"ratio: {rows[0]['images_per_s'] / rows[1]['images_per_s']:.2f}x  ({args.n} JPEGs of 640x480)")


if __name__ == "__main__":
    main()
