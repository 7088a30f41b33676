"""The thumbnail's downscale: the native kernel against torch's and Pillow's antialiased bicubic, on photos.

Every registration into a database that keeps thumbnails downscales the decoded image (a 640x480 photo to
416x312, ``server/core/embedding/thumbnails.py``). Methods, each timed on the same decoded RGB images
(``--size``, the test photos resized once), one image a call, in turns (round-robin over ``--runs`` rounds,
so the machine's load falls on each alike), single-threaded, median of rounds, per image:

- ``native``: ``thumbnails.downscale`` as the server calls it: ``lookalike._native.downscale_rgbx`` reading
  the image in place (Pillow's Arrow export), an ``RGBX`` image over its output;
- ``native_copy``: the same kernel given ``img.tobytes("raw", "RGBX")`` (the path for images whose rows
  Pillow keeps in several blocks);
- ``torch``: torch's uint8 bicubic with antialias as the server used it before (one pixel copy in, planes
  interleaved by Pillow out): the fallback where the CPU has no AVX-512 VBMI;
- ``pillow``: ``Image.resize(size, BICUBIC)`` (the reference the others are held to);
- ``copy``: ``img.tobytes("raw", "RGBX")`` alone, the cost of reading the image once (a floor for any
  method that reads every pixel through Python's side).

Also the largest and mean difference of each method from Pillow's pixels (levels of 255), and ratios.

    .venv/bin/python bench/downscale.py [--size 640x480] [--runs 15] [--json]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import harness
import numpy as np
from PIL import Image


def torch_downscale(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    import torch

    raw = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    pixels = raw.view(img.height, img.width, 3).permute(2, 0, 1).unsqueeze(0)
    out = torch.nn.functional.interpolate(pixels, size=(size[1], size[0]), mode="bicubic", antialias=True)
    return Image.merge("RGB", [Image.frombuffer("L", size, p, "raw", "L", 0, 1) for p in out[0].numpy()])


def main() -> int:
    ap = harness.arguments(__doc__)
    ap.add_argument("--size", default="640x480", help="the decoded images' size, WxH")
    ap.add_argument("--runs", type=int, default=15, help="rounds; each times every method on every image")
    args = ap.parse_args()
    out = harness.Results(args, with_load=True)
    import torch
    from lookalike.server.core.embedding.thumbnails import THUMBNAIL_MAX_SIDE, downscale, thumbnail_size

    from lookalike import _native

    torch.set_num_threads(1)
    w, h = (int(v) for v in args.size.split("x"))
    size = thumbnail_size(w, h, THUMBNAIL_MAX_SIDE)
    imgs = [Image.fromarray(a).convert("RGB").resize((w, h), Image.Resampling.LANCZOS) for a in harness.test_photos()]
    methods: dict[str, Callable[[Image.Image], Any]] = {
        "native": lambda im: downscale(im, size),
        "native_copy": lambda im: _native.downscale_rgbx(im.tobytes("raw", "RGBX"), w, h, *size),
        "torch": lambda im: torch_downscale(im, size),
        "pillow": lambda im: im.resize(size, Image.Resampling.BICUBIC),
        "copy": lambda im: im.tobytes("raw", "RGBX"),
    }
    kernel = _native.resample_kernel(w, size[0])
    out.say(f"{len(imgs)} photos {w}x{h} -> {size[0]}x{size[1]}; native kernel: {kernel}")
    for fn in methods.values():  # warm up (torch's first interpolate is slow)
        fn(imgs[0])
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.runs):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            for im in imgs:
                fn(im)
            times[name].append((time.perf_counter() - t0) / len(imgs) * 1e3)

    def pixels(name: str, im: Image.Image) -> np.ndarray:
        got = methods[name](im)
        if isinstance(got, bytes):
            got = Image.frombuffer("RGBX", size, got, "raw", "RGBX", 0, 1)
        return np.asarray(got.convert("RGB"), np.int16)

    ms = {m: statistics.median(t) for m, t in times.items()}
    for name in methods:
        row: dict[str, Any] = {"method": name, "ms_per_image": round(ms[name], 3),
                               "best_ms": round(min(times[name]), 3)}  # fmt: skip
        if name != "copy":
            diff = [np.abs(pixels(name, im) - np.asarray(methods["pillow"](im), np.int16)) for im in imgs]
            row |= {"max_diff": int(max(d.max() for d in diff)), "mean_diff": round(float(np.mean(diff)), 4),
                    "x_native": round(ms[name] / ms["native"], 2)}  # fmt: skip
        out.add(row, size=f"{w}x{h}", kernel=kernel)
        if out.table:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
    out.say(f"native: {ms['torch'] / ms['native']:.2f}x faster than torch, {ms['pillow'] / ms['native']:.2f}x than "
            f"Pillow; {ms['native'] / ms['copy']:.2f}x one read of the image")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
