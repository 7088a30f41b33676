"""What keeping images costs: registration throughput and bytes per image of keep none, thumbnail and original.

One ``lookalike serve`` child process (the real default model, ``--fsync batch`` unless ``--fsync`` says),
one database per keep policy per run, registered by ``client.bulk_set`` streams of ``BulkItem`` s as
``lookalike add`` sends them (``--batch`` images per stream, ``--streams`` streams at once) of 640x480 JPEG
photos (random 3/4 crops of the scikit-image photos the tests use). Each run registers into the three
policies in turns (``--rounds`` slices of its images each, so a change in the machine's load falls on every
policy alike), in an order rotated from run to run, and every (run, policy) gets its own images,
so the content-addressed image store never finds a blob already stored. Reported: images/s per policy
(median over runs) and the median of each run's thumbnail/none and original/none ratios (issue target:
keep thumbnail at most 15% slower than keep none, i.e. seconds per image <= 1.15x); bytes per image of
``<data-dir>/images`` (apparent size, and disk blocks: small files round up to 4 KiB blocks), of the rest
of the data directory (the log), the mean thumbnail, and the originals sent. Kept bytes are read back
with ``GetImage`` (view thumbnail / original) and checked. The machine may be shared: read the ratios,
and the server's CPU seconds per image (from /proc), which other jobs disturb far less than wall time.

    nice -n 10 .venv/bin/python bench/image_store.py [--images 160] [--runs 5] [--rounds 5] [--fsync batch] [--json]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness

POLICIES = ("none", "thumbnail", "original")
SIZE = (640, 480)


def disk_usage(path: Path, *, exclude: Path | None = None) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the files under ``path``, leaving out those under ``exclude``."""
    size = blocks = 0
    for f in path.rglob("*"):
        if exclude is not None and f.is_relative_to(exclude):
            continue
        try:
            st = f.stat()
        except FileNotFoundError:  # a temporary file renamed meanwhile
            continue
        if f.is_file():
            size += st.st_size
            blocks += st.st_blocks * 512
    return size, blocks


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat): the server's own cost per image, which
    other jobs on a shared machine disturb far less than wall-clock rates."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def register(address: str, db: str, images: list[bytes], batch: int, streams: int, first: int = 0) -> tuple[float, int]:
    """Send ``images`` as ``lookalike add`` does (``streams`` streams of ``batch`` at once) as groups ``g<first>``
    on; (seconds, registered)."""
    from lookalike.client import BulkItem, LookalikeClient

    ok = [0]
    lock = threading.Lock()
    with LookalikeClient(address, timeout=600) as c:

        def send(start: int) -> None:
            part = images[start : start + batch]
            items = (BulkItem(f"g{first + start + k}", image=data, client_ref=f"p{start + k}")
                     for k, data in enumerate(part))  # fmt: skip
            r = c.bulk_set(db, items)
            if r.failures:
                raise RuntimeError(f"{db}: {len(r.failures)} failures, first {r.failures[0].reason}")
            with lock:
                ok[0] += r.succeeded_count

        began = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            list(pool.map(send, range(0, len(images), batch)))
        return time.perf_counter() - began, ok[0]


def check_kept(address: str, db: str, policy: str, images: list[bytes], sample: int = 8) -> dict[str, Any]:
    """Read kept bytes back (GetImage views): the original must equal what was sent; the thumbnail is in the
    thumbnail format (``server/core/embedding/thumbnails.py``)."""
    from lookalike.client import ClientError, LookalikeClient
    from lookalike.server.core.embedding.thumbnails import THUMBNAIL_MEDIA_TYPE

    out: dict[str, Any] = {"readback": "ok"}
    with LookalikeClient(address) as c:
        for i in range(0, len(images), max(1, len(images) // sample)):
            for view in ("thumbnail", "original"):
                try:
                    data, media = c.get_image_bytes(db, f"g{i}", 0, view)
                except ClientError as err:
                    kept = policy == "original" or (policy == "thumbnail" and view == "thumbnail")
                    if kept or err.reason != "IMAGE_NOT_KEPT":
                        out["readback"] = f"{view} of g{i}: {err.reason}"
                    continue
                if policy == "none" or (policy == "thumbnail" and view == "original"):
                    out["readback"] = f"{view} of g{i} kept under keep {policy}"
                elif view == "original" and data != images[i]:
                    out["readback"] = f"original of g{i} differs from the bytes sent"
                elif view == "thumbnail" and media not in (THUMBNAIL_MEDIA_TYPE, "image/webp"):  # lossless: WebP
                    out["readback"] = f"thumbnail of g{i} is {media}"
    return out


def main() -> int:
    ap = harness.arguments(__doc__)
    ap.add_argument("--images", type=int, default=160, help="images registered per database (per policy per run)")
    ap.add_argument("--runs", type=int, default=5, help="runs; each registers into every policy")
    ap.add_argument("--batch", type=int, default=64, help="images per stream (lookalike add --batch)")
    ap.add_argument("--streams", type=int, default=2, help="streams at once (lookalike add sends 2)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="each run's images per policy go in this many turns (of at least --batch x --streams images)",
    )
    ap.add_argument("--fsync", default="batch", help="the server's --fsync (always, batch, never)")
    args = ap.parse_args()
    out = harness.Results(args, with_load=True)
    from lookalike.server.core.embedding import thumbnails as t

    thumb_setting = f"{t.THUMBNAIL_FORMAT} q{t.THUMBNAIL_QUALITY} max side {t.THUMBNAIL_MAX_SIDE}"

    from lookalike.client import LookalikeClient

    arrays = harness.test_photos()
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-keep-") as tmp:
        root = Path(tmp)
        sets = {(r, p): [f.read_bytes() for f in harness.jpeg_folder(root / f"jpeg-{r}-{p}", args.images, arrays,
                                                                       SIZE, seed=1000 * r + k)]
                for r in range(args.runs) for k, p in enumerate(POLICIES)}  # fmt: skip
        warm = [f.read_bytes() for f in harness.jpeg_folder(root / "warm", 64, arrays, SIZE, seed=999_999)]
        data = root / "data"
        images_dir = data / "images"
        with harness.ServeProcess("--data-dir", str(data), "--fsync", args.fsync) as srv:
            with LookalikeClient(srv.address) as c:
                for p in POLICIES:  # warm up: the model, the decode pool, the WebP encoder
                    c.create_database(f"warm-{p}", keep=p)
                    register(srv.address, f"warm-{p}", warm[:32] if p != "original" else warm[32:], 16, 2)
                for r in range(args.runs):
                    order = POLICIES[r % 3 :] + POLICIES[: r % 3]
                    acc = {p: {"seconds": 0.0, "n": 0, "cpu": 0.0, "kept": 0, "blocks": 0, "log": 0} for p in order}
                    for p in order:
                        c.create_database(f"{p}-{r}", keep=p)
                    step = max(args.batch * args.streams, -(-args.images // args.rounds))  # each turn fills the streams
                    for a in range(0, args.images, step):  # rounds: the policies take turns, drift hits each alike
                        for p in order:
                            db, part = f"{p}-{r}", sets[r, p][a : a + step]
                            kept0, log0 = disk_usage(images_dir), disk_usage(data, exclude=images_dir)[0]
                            cpu0 = cpu_seconds(srv.pid)
                            seconds, n = register(srv.address, db, part, args.batch, args.streams, first=a)
                            acc[p]["cpu"] += cpu_seconds(srv.pid) - cpu0
                            acc[p]["seconds"] += seconds
                            acc[p]["n"] += n
                            kept1 = disk_usage(images_dir)
                            acc[p]["kept"] += kept1[0] - kept0[0]
                            acc[p]["blocks"] += kept1[1] - kept0[1]
                            acc[p]["log"] += disk_usage(data, exclude=images_dir)[0] - log0
                    for p in order:
                        db, got, n = f"{p}-{r}", acc[p], acc[p]["n"]
                        sent = sum(len(b) for b in sets[r, p])
                        row = out.add(run=r, keep=p, images=n, seconds=round(got["seconds"], 3),
                                      images_per_s=round(n / got["seconds"], 2),
                                      server_cpu_ms_per_image=round(1000 * got["cpu"] / n, 2),
                                      kept_bytes_per_image=round(got["kept"] / n),
                                      kept_disk_bytes_per_image=round(got["blocks"] / n),
                                      log_bytes_per_image=round(got["log"] / n),
                                      sent_bytes_per_image=round(sent / n), fsync=args.fsync,
                                      **check_kept(srv.address, db, p, sets[r, p]))  # fmt: skip
                        out.say(f"run {r} keep {p:<9} {row['images_per_s']:6.1f} images/s, "
                                f"{row['server_cpu_ms_per_image']:6.2f} server CPU ms/image, "
                                f"kept {row['kept_bytes_per_image']} B/image, load {row['load']}")  # fmt: skip

    rows = [r for r in out.rows if "keep" in r]
    by = {(r["run"], r["keep"]): r for r in rows}
    summary = []
    for p in POLICIES:
        mine = [r for r in rows if r["keep"] == p]
        ratios = [by[r, p]["images_per_s"] / by[r, "none"]["images_per_s"] for r in range(args.runs)]
        thumbs = [r["kept_bytes_per_image"] for r in rows if r["keep"] == "thumbnail"]
        summary.append(out.add(summary=p, images_per_s=round(statistics.median(r["images_per_s"] for r in mine), 1),
                               rate_vs_none=round(statistics.median(ratios), 3),
                               time_vs_none=round(statistics.median(1 / x for x in ratios), 3),
                               rate_vs_none_range=[round(min(ratios), 3), round(max(ratios), 3)],
                               server_cpu_ms_per_image=round(statistics.median(r["server_cpu_ms_per_image"]
                                                                               for r in mine), 2),
                               cpu_vs_none=round(statistics.median(by[r, p]["server_cpu_ms_per_image"]
                                                                   / by[r, "none"]["server_cpu_ms_per_image"]
                                                                   for r in range(args.runs)), 3),
                               kept_bytes_per_image=round(statistics.median(r["kept_bytes_per_image"] for r in mine)),
                               kept_disk_bytes_per_image=round(statistics.median(r["kept_disk_bytes_per_image"]
                                                                                 for r in mine)),
                               log_bytes_per_image=round(statistics.median(r["log_bytes_per_image"] for r in mine)),
                               mean_thumbnail_bytes=round(statistics.mean(thumbs)),
                               sent_bytes_per_image=round(statistics.mean(r["sent_bytes_per_image"] for r in mine)),
                               readback="ok" if all(r["readback"] == "ok" for r in mine) else "FAILED",
                               runs=args.runs, images=args.images, thumbnail=thumb_setting))  # fmt: skip
    head = ["keep", "images/s (median)", "x none (rate)", "x none (s/image)", "min-max x none",
            "server CPU ms/image", "x none (CPU)", "kept B/image", "kept disk B/image", "log B/image", "sent B/image",
            "read back"]  # fmt: skip
    out.print_table(harness.markdown(head, ([s["summary"], s["images_per_s"], s["rate_vs_none"], s["time_vs_none"],
                                             "{}-{}".format(*s["rate_vs_none_range"]), s["server_cpu_ms_per_image"],
                                             s["cpu_vs_none"], s["kept_bytes_per_image"],
                                             s["kept_disk_bytes_per_image"], s["log_bytes_per_image"],
                                             s["sent_bytes_per_image"], s["readback"]] for s in summary)))  # fmt: skip
    thumb = next(s for s in summary if s["summary"] == "thumbnail")
    verdict = "met" if thumb["time_vs_none"] <= 1.15 else "NOT met"
    by_cpu = "met" if thumb["cpu_vs_none"] <= 1.15 else "NOT met"
    out.say(f"issue target (keep thumbnail <= 15% slower registration than keep none): {verdict} by wall clock "
            f"(seconds per image x{thumb['time_vs_none']}), {by_cpu} by the server's CPU per image "
            f"(x{thumb['cpu_vs_none']}), medians of {args.runs} runs; mean thumbnail "
            f"{thumb['mean_thumbnail_bytes']} B, {thumb_setting}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
