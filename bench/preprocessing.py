"""Which resize policy should the served model use: centre crop, stretch, or letterbox? (issue 14)

The same EfficientNet-Lite0 ImageNet weights (the server's default model) are written three
times, differing only in ``resize_mode`` (all at the served input size, 224), and compared:

- on labelled sets with ``lookalike eval`` (Fashion-MNIST, the emoji domain sets): the
  ``eval`` stage prints and runs the exact command;
- on near-duplicate recall over real photos (scikit-image's photos and Debian
  ``mate-backgrounds``), cut into non-overlapping tiles of three shapes (2x2 grid, three
  vertical strips, three horizontal strips) so the index holds portrait, landscape and square
  images whose nearest distractors are their own neighbours. Each tile is copied with a crop,
  a rescale, an aspect-ratio change, JPEG, colour jitter, or all of them; recall@k is the share
  of copies whose own tile ranks in the top k of the whole index.

Stages::

    python bench/preprocessing.py models   --work WORK      # WORK/{crop,stretch,letterbox}.pt
    python bench/preprocessing.py eval     --work WORK -- --data fashion-mnist --gallery-limit 5000 ...
    python bench/preprocessing.py near-dup --work WORK --seeds 0,1 --out WORK/near_dup.json
    python bench/preprocessing.py table    --work WORK      # markdown from WORK/*.json, ratios vs crop

Run it niced on a shared machine (``nice -n 10``); every stage is bounded by its arguments.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np
from PIL import Image

MODES = {"crop": "shorter_then_center_crop", "stretch": "stretch", "letterbox": "letterbox"}
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
NEAR_DUP_TRANSFORMS = ("crop", "rescale", "aspect", "jpeg", "jitter", "all")


def model_path(work: Path, mode: str) -> Path:
    return work / f"{mode}.pt"


def write_models(work: Path) -> list[Path]:
    """The default model's weights under each resize mode (only the metadata differs)."""
    from lookalike.server.core.embedding.default_model import default_model_path

    from lookalike.modelfile import load_embedder, save_embedder

    module, meta = load_embedder(default_model_path())
    out = []
    for short, mode in MODES.items():
        m = dataclasses.replace(meta, resize_mode=mode, model_name=f"{meta.model_name.split('@')[0]}@{short}")
        out.append(save_embedder(module, model_path(work, short), m))
        print(f"wrote {out[-1]} (resize_mode={mode}, input {m.input_size})")
    return out


# ----------------------------------------------------------------------------- near-duplicate protocol


def source_photos(max_side: int = 800) -> list[tuple[str, Image.Image]]:
    """Real photos available offline (scikit-image's, Debian ``mate-backgrounds`` where installed), RGB, longer
    side at most ``max_side``."""
    out = [(name, harness.fit(Image.fromarray(harness.photo(name)), max_side)) for name in SKIMAGE_PHOTOS]
    out.append(("motorcycle", harness.fit(Image.fromarray(harness.photo("stereo_motorcycle")), max_side)))
    return out + harness.mate_photos(max_side)


def tiles(photos: list[tuple[str, Image.Image]]) -> list[tuple[str, Image.Image]]:
    """Non-overlapping tiles; photo i is cut 2x2, into 3 vertical strips, or 3 horizontal strips."""
    out = []
    for i, (name, img) in enumerate(photos):
        w, h = img.size
        grid = [(2, 2), (3, 1), (1, 3)][i % 3]  # (columns, rows)
        for c in range(grid[0]):
            for r in range(grid[1]):
                box = (c * w // grid[0], r * h // grid[1], (c + 1) * w // grid[0], (r + 1) * h // grid[1])
                out.append((f"{name}/{c}{r}", img.crop(box)))
    return out


def aspect(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Squash one side to 60-80% (an aspect-ratio change of 1.25-1.67x), as a careless resize does."""
    f = rng.uniform(0.6, 0.8)
    w, h = img.size
    size = (max(1, round(w * f)), h) if rng.random() < 0.5 else (w, max(1, round(h * f)))
    return img.resize(size, Image.BICUBIC)


def near_dup_transforms() -> dict[str, Any]:
    from lookalike.trainer.eval.near_dup import color_jitter, crop, jpeg, rescale

    def combined(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return jpeg(color_jitter(rescale(aspect(crop(img, rng), rng), rng), rng), rng)

    return {"crop": crop, "rescale": rescale, "aspect": aspect, "jpeg": jpeg, "jitter": color_jitter, "all": combined}


def run_near_dup(work: Path, seeds: list[int], modes: list[str], ks: list[int], threads: int,
                 say: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    import torch
    from lookalike.trainer.eval.embedders import open_embedder
    from lookalike.trainer.eval.metrics import duplicate_recall

    torch.set_num_threads(threads)
    index = tiles(source_photos())
    images = [img for _, img in index]
    fns = near_dup_transforms()
    copies = {}  # (seed, transform) -> copies of every tile, identical for every mode
    for seed in seeds:
        for t_i, name in enumerate(NEAR_DUP_TRANSFORMS):
            rng = np.random.default_rng([seed, t_i])
            copies[seed, name] = [fns[name](img, rng) for img in images]
    shapes = np.array([img.size for img in images], dtype=np.float64)
    ratio = shapes.max(1) / shapes.min(1)
    result: dict[str, Any] = {
        "protocol": {
            "index": len(images),
            "photos": len({n.split("/")[0] for n, _ in index}),
            "aspect_ratio_median": round(float(np.median(ratio)), 2),
            "aspect_ratio_max": round(float(ratio.max()), 2),
            "seeds": seeds,
            "copies_per_transform": len(images) * len(seeds),
        },
        "modes": {},
    }
    targets = np.arange(len(images))
    for mode in modes:
        emb = open_embedder(str(model_path(work, mode)), batch_size=32)
        emb.threads = threads  # type: ignore[attr-defined]
        start = time.perf_counter()
        idx = emb.embed(images)
        per: dict[str, dict[str, float]] = {}
        for name in NEAR_DUP_TRANSFORMS:
            hits = [duplicate_recall(emb.embed(copies[s, name]), idx, targets, ks) for s in seeds]
            per[name] = {k: float(np.mean([h[k] for h in hits])) for k in hits[0]}
        per["mean"] = {k: float(np.mean([per[t][k] for t in NEAR_DUP_TRANSFORMS])) for k in per["crop"]}
        result["modes"][mode] = {"near_dup": per, "embed_seconds": round(time.perf_counter() - start, 1)}
        say(f"{mode}: " + ", ".join(f"{t} {100 * v['recall@1']:.1f}" for t, v in per.items()))
    return result


# ----------------------------------------------------------------------------- tables


def merge_near_dup(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of the same protocol with different seeds -> one result, each seed weighted alike."""
    weights = [len(r["protocol"]["seeds"]) for r in runs]
    modes = [m for m in runs[0]["modes"] if all(m in r["modes"] for r in runs)]
    merged: dict[str, Any] = {
        "protocol": {**runs[0]["protocol"], "seeds": sum((r["protocol"]["seeds"] for r in runs), [])}
    }
    merged["modes"] = {}
    for m in modes:
        per = {}
        for t, vals in runs[0]["modes"][m]["near_dup"].items():
            per[t] = {
                k: float(np.average([r["modes"][m]["near_dup"][t][k] for r in runs], weights=weights)) for k in vals
            }
        merged["modes"][m] = {"near_dup": per}
    return merged


def near_dup_table(res: dict[str, Any], k: str = "recall@1") -> str:
    modes = list(res["modes"])
    cols = [*NEAR_DUP_TRANSFORMS, "mean"]
    lines = ["| resize mode | " + " | ".join(f"{c} R@{k.split('@')[1]}" for c in cols) + " | mean vs crop |"]
    lines.append("|" + "---|" * (len(cols) + 2))
    base = res["modes"].get("crop", res["modes"][modes[0]])["near_dup"]["mean"][k]
    for m in modes:
        nd = res["modes"][m]["near_dup"]
        cells = [f"{100 * nd[c][k]:.1f}" for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {nd['mean'][k] / base:.3f}x |")
    return "\n".join(lines)


def eval_table(path: Path) -> str:
    """``lookalike eval --json`` output -> one row per model, plus ratios of kNN@1 and mAP to the first."""
    data = json.loads(path.read_text())
    rows = data["results"]
    keys = [k for k in rows[0] if k.startswith(("knn@", "recall@")) or k == "mAP"]
    dups = sorted({t for r in rows for t in r.get("near_dup", {})})
    head = ["model", *keys, *(f"dup-{t} R@1" for t in dups), "kNN@1 vs first", "mAP vs first"]
    lines = [f"`{data['data']}`, gallery {rows[0]['gallery']}, queries {rows[0]['queries']}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["model"])] + [f"{100 * r[k]:.2f}" for k in keys]
        cells += [f"{100 * r['near_dup'][t]['recall@1']:.2f}" if t in r.get("near_dup", {}) else "" for t in dups]
        cells.append(f"{r['knn@1'] / rows[0]['knn@1']:.3f}x" if "knn@1" in r else "")
        cells.append(f"{r['mAP'] / rows[0]['mAP']:.3f}x" if r.get("mAP") and rows[0].get("mAP") else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = harness.arguments(__doc__)  # --json / --out: the near-dup result, the table stage's Markdown
    p.add_argument("stage", choices=["models", "eval", "near-dup", "table"])
    p.add_argument("--work", type=Path, default=Path("runs/preprocessing"))
    p.add_argument("--modes", default="crop,stretch,letterbox", help="subset of crop,stretch,letterbox")
    p.add_argument("--seeds", default="0", help="near-dup: comma-separated seeds (copies per seed)")
    p.add_argument("--ks", default="1,5", help="near-dup: recall@k values")
    p.add_argument("--threads", type=int, default=2)
    args, rest = p.parse_known_args(argv)  # eval: the arguments after -- go to lookalike eval
    if rest and args.stage != "eval":
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "models":
        write_models(args.work)
    elif args.stage == "eval":
        rest = [a for a in rest if a != "--"]
        cmd = ["lookalike", "eval"] + [a for m in modes for a in ("--model", str(model_path(args.work, m)))] + rest
        print("$ " + shlex.join(cmd), flush=True)
        exe = [sys.executable, "-m", "lookalike.trainer.eval_cli"] + cmd[2:]
        return subprocess.call(exe)
    elif args.stage == "near-dup":
        seeds = [int(s) for s in args.seeds.split(",")]
        ks = [int(k) for k in args.ks.split(",")]
        out = harness.Results(args)
        res = run_near_dup(args.work, seeds, modes, ks, args.threads, say=out.say)
        out.add(res)
        out.print_table(json.dumps(res["protocol"]) + "\n" + near_dup_table(res))
    else:
        parts, near = [], []
        for path in sorted(args.work.glob("*.json")):
            raw = json.loads(path.read_text())
            if "modes" not in raw and "results" not in raw:
                continue  # not a result (e.g. this stage's own --out)
            if "modes" in raw:
                near.append(raw)
            parts.append(f"### {path.stem}\n\n" + (near_dup_table(raw) if "modes" in raw else eval_table(path)))
        if len(near) > 1:
            parts.append("### near-duplicates, all seeds\n\n" + near_dup_table(merge_near_dup(near)))
        text = "\n\n".join(parts)
        out = harness.Results(args)
        out.add(markdown=text)
        out.print_table(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
