"""Similarity tiers (trainer/tiers.py): precision and recall of each tier, per model, on images it never saw.

For each model (``default``: the server's converted EfficientNet-Lite0, its tiers measured on the built-in
synthetic images at conversion; ``--model PATH``: any model file, its stored tiers, else the built-in
calibration done here), on each set:

- the labelled domain sets of ``lookalike.trainer.eval.domains`` (``emoji-google``, ``emoji-twitter``,
  ``icons-tabler``; installed by ``scripts/install-datasets.sh``, skipped when missing): a seeded sample
  of ``--n`` images, plus a duplicate copy and a near copy of each of ``--copies`` of them, so one set
  has all four relations: duplicate (an image and its re-encoded, resized copy), near (an edited copy:
  crop and colour), similar (two images of one label), unrelated (different labels);
- ``photos``: the scikit-image photos (scikit-image installed) and their copies; no labels, so two
  different photos count as unrelated.

Per tier: precision (of the pairs at or above its threshold, the fraction that are that relation or
closer) and recall (of the pairs of exactly that relation, the fraction at or above it). The copies
use another seed than any calibration. With ``--own`` (default on), each domain set is also scored
with tiers calibrated on 64 *other* images of that set (what ``lookalike train`` does with its held-out
images, and ``lookalike calibrate --images``), to show what calibrating on one's own domain changes.

    .venv/bin/python bench/tiers.py [--model runs/x/best_export.pt] [--n 300] [--copies 150] [--json]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import harness
import numpy as np

DOMAIN_SETS = ("emoji-google", "emoji-twitter", "icons-tabler")
PHOTO_NAMES = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
OWN_IMAGES = 64


def load_sets(n: int, seed: int) -> tuple[dict[str, tuple[list[Any], np.ndarray, list[Any]]], list[str]]:
    """``{name: (images, labels, other images for an own calibration)}`` and notes on what was skipped."""
    from lookalike.trainer.eval.domains import load_domain
    from PIL import Image

    sets: dict[str, tuple[list[Any], np.ndarray, list[Any]]] = {}
    notes = []
    for name in DOMAIN_SETS:
        try:
            gallery, _ = load_domain(name)
        except ValueError as exc:
            notes.append(f"{name} skipped: {exc}")
            continue
        order = np.random.default_rng(seed).permutation(len(gallery))
        pick, rest = order[:n], order[n : n + OWN_IMAGES]
        sets[name] = ([gallery.images[i] for i in pick], gallery.labels[pick], [gallery.images[i] for i in rest])
    try:
        photos = [Image.fromarray(a) for a in harness.photos(PHOTO_NAMES, skip_missing=True)]
        sets["photos"] = (photos, np.arange(len(photos)), [])  # one label each: different photos are unrelated
    except ImportError as exc:
        notes.append(f"photos skipped: {exc}")
    return sets, notes


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--model", action="append", default=[], type=Path, help="a model file (repeat); default too")
    ap.add_argument("--no-default", action="store_true", help="leave out the server's default model")
    ap.add_argument("--n", type=int, default=300, help="images per domain set (default 300)")
    ap.add_argument("--copies", type=int, default=150, help="images of each set given two copies (default 150)")
    ap.add_argument("--no-own", dest="own", action="store_false", help="skip the tiers calibrated on each set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from lookalike.server.core.embedding.default_model import default_model_path
    from lookalike.trainer.calibration_images import SOURCE, calibration_images
    from lookalike.trainer.tiers import calibrate_tiers, module_embed, tier_report

    from lookalike.modelfile import load_embedder

    results = harness.Results(args)
    models: list[tuple[str, Path]] = []
    if not args.no_default:
        started = time.perf_counter()
        path = default_model_path()
        results.say(f"default model: {path} ({time.perf_counter() - started:.1f}s to find or convert)")
        models.append(("default", path))
    models += [(str(p), p) for p in args.model]
    sets, notes = load_sets(args.n, args.seed)
    for note in notes:
        results.say(note)

    table = []
    for label, path in models:
        module, meta = load_embedder(path)
        embed = module_embed(module, meta)
        tiers, source = meta.tiers, "stored"
        if tiers is None:
            tiers, _ = calibrate_tiers(embed, calibration_images(), source=SOURCE)
            source = f"{SOURCE} (here)"
        results.say(f"{label}: tiers {tiers} ({source}: {(meta.calibration or {}).get('source', SOURCE)})")
        for set_name, (images, labels, others) in sets.items():
            variants = [("builtin", dict(tiers))]
            if args.own and len(others) >= 16:
                own, _ = calibrate_tiers(embed, others, source=f"{set_name} ({len(others)} other images)")
                variants.append((f"own{len(others)}", own))
            copies = min(args.copies, len(images))
            started = time.perf_counter()
            for variant, t in variants:
                report = tier_report(embed, t, labelled={set_name: (images, labels)}, copies=copies,
                                     seed=args.seed + 1000)  # fmt: skip
                row = {"model": label, "tiers": variant, "set": set_name, "images": len(images), "copies": copies}
                table.append(results.add({**row, **report[set_name]}))
            results.say(f"{label} on {set_name}: {time.perf_counter() - started:.0f}s")

    def cell(c: dict[str, Any]) -> str:
        p = "-" if c["precision"] is None else f"{c['precision']:.2f}"
        r = "-" if c["recall"] is None else f"{c['recall']:.2f}"
        return f"{c['threshold']:.3f}: P {p} R {r}"

    results.print_table(
        harness.markdown(
            ["model", "tiers", "set", "duplicate", "near", "similar"],
            [
                (r["model"], r["tiers"], r["set"], cell(r["duplicate"]), cell(r["near"]), cell(r["similar"]))
                for r in table
            ],  # fmt: skip
        )
    )


if __name__ == "__main__":
    main()
