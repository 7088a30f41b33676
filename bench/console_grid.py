"""The console's database grid on a big database: the server time of one page of thumbnails (target < 150 ms).

A server in this process (``--http-port``, a token, in memory, no HNSW graph) with one database of ``--n``
images: ``--kept`` real photos (variants of the scikit-image set, thumbnails kept) first in the key order, so
the first page shows real thumbnails, then random unit vectors of the default model's dimension written
straight into the catalog (``--storage``, default f16: 1M x 1280 takes 2.5 GB), 10 images a group, each with
a ``category`` of 10. Timed, signed in with a cookie, ``--runs`` times each (the median is reported), each
page of ``--page`` tiles (the console shows 48; ``pages.GRID_PAGE`` is set for the run):

- ``first``: the first page (``GET /ui/db/grid``); ``deep``: a page in the middle of the key order (its
  ``page`` token); ``prefix``: a group prefix in the middle (``group_prefix=g0500``: 1,000 images);
  ``where``: an attribute filter that keeps 1 image in 10 (``where=category=c3``); ``after_write``: the
  first page right after a write of one image; ``after_bulk``: after a write of 1,000 (the built-in store keeps
  its group names sorted as it writes: no write makes the next listing sort every key, ``key_order.py``);
- ``loopback_ms`` is request to response on 127.0.0.1 (``requests``, keep-alive), ``server_ms`` the page's
  own ``Server-Timing`` (service calls and rendering), ``ratio`` loopback over the ``first`` page's; the
  ``thumbnails`` row times the page's thumbnails fetched one after another (the browser asks for them after
  the page, 6 at a time).

    .venv/bin/python bench/console_grid.py --n 1000000 [--storage f16] [--page 100] [--runs 7] [--json]
"""

from __future__ import annotations

import html as html_lib
import re
import statistics
import time
from typing import Any

import harness
import numpy as np

TOKEN = "bench-console-grid-token-0123456789"
TARGET_MS = 150.0
PER_GROUP = 10


def kept_photos(count: int) -> list[bytes]:
    """``count`` distinct small JPEGs: crops of the scikit-image photos at varied places and sizes."""
    from PIL import Image

    arrays = harness.test_photos()
    rng = np.random.default_rng(1)
    out = []
    for i in range(count):
        a = arrays[i % len(arrays)]
        h, w = a.shape[:2]
        frac = rng.uniform(0.5, 0.95)
        ch, cw = int(h * frac), int(w * frac)
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = Image.fromarray(a[top : top + ch, left : left + cw]).resize((320, 240))
        out.append(harness.jpeg(img, quality=85))
    return out


def fill(service: Any, n: int, kept: int, dimension: int, batch: int = 20_000, say: Any = print) -> float:
    """The database ``grid``: ``kept`` photos (groups ``a0000``...), then random vectors (``g000000``...)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for i, data in enumerate(kept_photos(kept)):  # the image is kept, the vector is sent: no model run
        v = rng.standard_normal(dimension).astype(np.float32)
        service.set_image("grid", f"a{i // PER_GROUP:04d}", None, data, (v / np.linalg.norm(v)).tolist(),
                          attributes={"category": f"c{i % 10}", "source": f"photo-{i}.jpg"})  # fmt: skip
    catalog = service.catalog
    rest = n - kept
    for a in range(0, rest, batch):
        m = min(batch, rest - a)
        v = rng.standard_normal((m, dimension), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        reqs = [(f"g{i // PER_GROUP:06d}", i % PER_GROUP, "", {"category": f"c{i % 10}"}) for i in range(a, a + m)]
        catalog.set_images("grid", reqs, v)
        if (a // batch) % 10 == 9:
            say(f"{a + m + kept:,} images, {time.perf_counter() - t0:.0f} s, rss {harness.rss() / 2**30:.1f} GiB")
    return time.perf_counter() - t0


def timed(session: Any, url: str, runs: int) -> tuple[float, float, str]:
    """Medians of ``runs`` GETs after one warm-up: (loopback ms, Server-Timing ms), and the last page's HTML."""
    session.get(url, timeout=600).raise_for_status()
    loop, server = [], []
    html = ""
    for _ in range(runs):
        t = time.perf_counter()
        r = session.get(url, timeout=600)
        loop.append((time.perf_counter() - t) * 1e3)
        r.raise_for_status()
        server.append(float(re.search(r"dur=([\d.]+)", r.headers["server-timing"]).group(1)))
        html = r.text
    return statistics.median(loop), statistics.median(server), html


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--n", type=int, default=1_000_000, help="images in the database")
    ap.add_argument("--kept", type=int, default=300, help="real photos with kept thumbnails, first in key order")
    ap.add_argument("--storage", default="f16", choices=["f32", "f16", "bf16", "i8"])
    ap.add_argument("--page", type=int, default=100, help="tiles a page shows (the console's default is 48)")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    res = harness.Results(args, show=harness.key_values, with_load=True)

    import requests
    from lookalike.server.core.paging import encode_token
    from lookalike.server.transport.console import pages

    pages.GRID_PAGE = args.page
    with harness.server(http_port=0, token=TOKEN, persist=False, hnsw_threshold=0, snapshot_interval_s=0) as running:
        service = running.service
        service.create_database("grid", storage=args.storage, keep="thumbnail")
        dimension = service.get_database("grid").dimension
        fill_s = fill(service, args.n, min(args.kept, args.n), dimension, say=res.say)
        res.say(f"filled {args.n:,} x {dimension} ({args.storage}) in {fill_s:.0f} s; rss "
                f"{harness.rss() / 2**30:.1f} GiB")  # fmt: skip

        base = f"http://127.0.0.1:{running.http_port}/ui"
        s = requests.Session()
        csrf = re.search(r'name="csrf" value="([^"]+)"', s.get(base + "/signin", timeout=60).text).group(1)
        s.post(base + "/signin", data={"token": TOKEN, "csrf": csrf}, timeout=60).raise_for_status()

        def row(case: str, url: str, first_ms: float | None = None) -> tuple[float, str]:
            loop, server, html = timed(s, base + url, args.runs)
            tiles = html.count('class="tile"')
            res.add(case=case, n=args.n, storage=args.storage, page=args.page, tiles=tiles, loopback_ms=round(loop, 1),
                    server_ms=round(server, 1), target_ms=TARGET_MS, under_target=server < TARGET_MS,
                    ratio=round(loop / first_ms, 2) if first_ms else 1.0)  # fmt: skip
            return loop, html

        first_ms, html = row("first", "/db/grid")
        thumbs = re.findall(r'src="(/ui/thumbnail\?[^"]+)"', html)
        middle = f"g{max(0, args.n - args.kept) // 2 // PER_GROUP:06d}"  # a group mid-way in the key order
        row("deep", f"/db/grid?page={encode_token([middle, 0])}", first_ms)
        row("prefix", f"/db/grid?group_prefix={middle[:-2]}", first_ms)  # 100 groups, 1,000 images
        row("where", "/db/grid?where=category%3Dc3", first_ms)

        # The first page right after a write of one image, and after a bulk write of 1,000 (``after_bulk``).
        rng = np.random.default_rng(9)
        for case, count in (("after_write", 1), ("after_bulk", 1000)):
            loop, server = [], []
            for k in range(args.runs):
                v = rng.standard_normal((count, dimension)).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                if count == 1:
                    service.set_image("grid", "zzz-writer", k, None, v[0].tolist())
                else:
                    service.catalog.set_images("grid", [(f"zzz-bulk-{k}", i, "", None) for i in range(count)], v)
                t = time.perf_counter()
                r = s.get(base + "/db/grid", timeout=600)
                loop.append((time.perf_counter() - t) * 1e3)
                server.append(float(re.search(r"dur=([\d.]+)", r.headers["server-timing"]).group(1)))
            res.add(case=case, n=args.n, storage=args.storage, page=args.page, tiles=r.text.count('class="tile"'),
                    loopback_ms=round(statistics.median(loop), 1), server_ms=round(statistics.median(server), 1),
                    target_ms=TARGET_MS, under_target=statistics.median(server) < TARGET_MS,
                    ratio=round(statistics.median(loop) / first_ms, 2))  # fmt: skip

        # The page's thumbnails, one after another (each an ETag'd blob from the image store).
        times = []
        for _ in range(max(1, args.runs // 2)):
            t = time.perf_counter()
            for url in thumbs:
                s.get(f"http://127.0.0.1:{running.http_port}{html_lib.unescape(url)}", timeout=60).raise_for_status()
            times.append((time.perf_counter() - t) * 1e3)
        res.add(case="thumbnails", n=args.n, count=len(thumbs), total_ms=round(statistics.median(times), 1),
                per_thumbnail_ms=round(statistics.median(times) / max(1, len(thumbs)), 2))  # fmt: skip


if __name__ == "__main__":
    main()
