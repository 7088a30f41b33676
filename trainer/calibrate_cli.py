"""``lookalike calibrate``: measure a model file's similarity tiers and store them in it.

Examples::

    lookalike calibrate runs/x/best_export.pt                     # on the built-in synthetic images
    lookalike calibrate runs/x/best_export.pt --images photos/    # on your own images (recommended)
    lookalike calibrate model.pt --images photos/ --json          # the tiers and how they were measured, as JSON

Rewrites the file's metadata in place (the weights are untouched; the model's identity digest, which
covers the weights, preprocessing and centre, does not change, so databases built with it still open).
The rules are those of ``lookalike.trainer.tiers``; your own images give tiers for your domain, the
built-in set the same tiers on every machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_IMAGES = 128


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lookalike calibrate",
        description="Measure a model file's similarity tiers (duplicate, near, similar) and store them in it.",
    )
    p.add_argument("model", type=Path, help="the model file to calibrate, in place")
    p.add_argument("--images", type=Path, default=None,
                   help="a folder of your images (recursive; default: the built-in synthetic set)")  # fmt: skip
    p.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help=f"use at most this many of --images, a seeded sample (default {DEFAULT_MAX_IMAGES})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of the altered copies")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--json", action="store_true", help="print the tiers and the calibration as JSON")
    return p


def folder_images(folder: Path, max_images: int, seed: int) -> list[Any]:
    """Up to ``max_images`` readable images under ``folder`` (a seeded sample when there are more)."""
    from lookalike.trainer.data.sources import ListSource, list_folder, load_readable

    if not folder.is_dir():
        raise ValueError(f"--images {folder} is not a folder")
    refs = list_folder(folder)
    if not refs:
        raise ValueError(f"--images {folder} holds no image files")
    picked = range(len(refs))
    if len(refs) > max_images:
        picked = sorted(np.random.default_rng(seed).choice(len(refs), size=max_images, replace=False).tolist())
    return load_readable(ListSource(refs), list(picked))


def summary(model: Path, tiers: dict[str, float], calibration: dict[str, Any]) -> str:
    """Human-readable lines: each tier and what it catches on the calibration images."""
    rates = calibration["rates"]
    lines = [
        f"{model}: tiers measured on {calibration['images']} images ({calibration['source']}), "
        f"{calibration['pairs']['unrelated']} unrelated pairs",
        f"  duplicate  {tiers['duplicate']:.3f}   {rates['duplicate_copies_duplicate']:.0%} of duplicate copies, "
        f"{rates['near_copies_duplicate']:.0%} of near copies at or above",
        f"  near       {tiers['near']:.3f}   {rates['near_copies_near']:.0%} of near copies, "
        f"{rates['unrelated_near']:.2%} of unrelated pairs at or above",
        f"  similar    {tiers['similar']:.3f}   {rates['unrelated_similar']:.2%} of unrelated pairs at or above",
    ]
    lines += [f"  clamped: {note}" for note in calibration.get("clamped", [])]
    if calibration.get("dropped_as_copies"):
        lines.append(f"  {calibration['dropped_as_copies']} image(s) left out as copies of others")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lookalike.trainer.tiers import calibrate_model_file

    try:
        if args.max_images < 1:
            raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
        images, source = None, None
        if args.images is not None:
            images = folder_images(args.images, args.max_images, args.seed)
            source = f"folder {args.images.name or args.images}"
        meta = calibrate_model_file(args.model, images, seed=args.seed, source=source, device=args.device)
    except ValueError as exc:  # includes ModelFileError
        print(f"lookalike calibrate: error: {exc}", file=sys.stderr)
        return 2
    assert meta.tiers is not None and meta.calibration is not None
    if args.json:
        print(json.dumps({"model": str(args.model), "tiers": meta.tiers, "calibration": meta.calibration}, indent=2))
    else:
        print(summary(args.model, meta.tiers, meta.calibration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
