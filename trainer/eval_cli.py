"""``lookalike eval``: how well does an embedder retrieve same-class and near-duplicate images?

Examples::

    lookalike eval --model runs/x/epoch_80_export.pt --data labelled/        # leave-one-out on a folder
    lookalike eval --model default --data gallery/ --query queries/          # folder against folder
    lookalike eval --model pixels --model default --data fashion-mnist       # baselines, 60k vs 10k
    lookalike eval --model m.pt --data fashion-mnist --near-dup --json out.json
    lookalike eval --model default --model runs/e/best_export.pt --data emoji-google   # npm emoji sets

``--data`` is a folder with one subfolder per class, or ``fashion-mnist`` (gallery: the 60,000
training images, queries: the 10,000 test images), or a domain set of
``lookalike.trainer.eval.domains`` (emoji-google, emoji-twitter, emoji-cross, icons-tabler).
``--model`` is an embedder file,
``default`` (the server's EfficientNet-Lite0 ImageNet model) or ``pixels`` (raw-pixel baseline);
repeat it to compare several on the same data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lookalike.trainer.eval.domains import DOMAINS, DomainSet, load_domain
from lookalike.trainer.eval.embedders import Embedder, open_embedder
from lookalike.trainer.eval.labelled import LabelledImages, load_labelled_folder
from lookalike.trainer.eval.metrics import retrieval_metrics
from lookalike.trainer.eval.near_dup import TRANSFORMS, near_duplicate_recall

FASHION_MNIST = "fashion-mnist"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lookalike eval", description="kNN accuracy, mAP, recall@k and near-duplicate recall of embedders."
    )
    p.add_argument("--model", "-m", action="append", required=True,
                   help="embedder file, 'default' or 'pixels'; repeat to compare")  # fmt: skip
    p.add_argument(
        "--data",
        "-d",
        required=True,
        help=f"labelled folder (one subfolder per class), fashion-mnist or one of {', '.join(DOMAINS)}",
    )
    p.add_argument("--query", "-q", help="labelled query folder (default: leave-one-out on --data)")
    p.add_argument("--fashion-mnist-dir", type=Path, default=None, help="IDX files folder")
    p.add_argument("--gallery-limit", type=int, default=None, help="use the first N gallery images")
    p.add_argument("--query-limit", type=int, default=None, help="use the first N query images")
    p.add_argument("--knn-k", type=_ints, default=[1, 20], help="kNN k values (default 1,20)")
    p.add_argument("--recall-k", type=_ints, default=[1, 5, 10], help="recall@k values (default 1,5,10)")
    p.add_argument("--no-map", action="store_true", help="skip mAP (sorts the whole gallery per query)")
    p.add_argument("--near-dup", action="store_true", help="also measure near-duplicate recall")
    p.add_argument("--near-dup-n", type=int, default=200, help="originals per transform (default 200)")
    p.add_argument("--near-dup-transforms", default=",".join(TRANSFORMS),
                   help=f"comma-separated subset of {','.join(TRANSFORMS)}")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--input-size", type=int, default=None, help="run model files at this input size instead")
    p.add_argument("--resize-size", type=int, default=None,
                   help="shorter side before the centre crop (= --input-size: the whole image, no crop)")  # fmt: skip
    p.add_argument("--pixel-size", type=int, default=None, help="side for the pixels baseline (default: native)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the default model file is cached")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    return p


def load_data(args: argparse.Namespace) -> tuple[LabelledImages, LabelledImages | None]:
    """``(gallery, query)``; ``query`` is None for leave-one-out on the gallery."""
    if args.data in DOMAINS:
        from lookalike.trainer.data.skips import SkipLog

        g, q = load_domain(args.data)

        def labelled(d: DomainSet) -> LabelledImages:
            return LabelledImages(d.images, d.labels, d.classes, SkipLog())

        return labelled(g), (labelled(q) if q is not None else None)
    if args.data == FASHION_MNIST:
        from lookalike.trainer.eval import fashion_mnist as fm

        folder = args.fashion_mnist_dir or fm.DEFAULT_DIR
        return fm.load_split("train", folder, args.gallery_limit), fm.load_split("test", folder, args.query_limit)
    gallery = load_labelled_folder(args.data)
    if args.gallery_limit is not None:
        gallery = gallery.subset(range(min(args.gallery_limit, len(gallery))))
    if args.query is None:
        return gallery, None
    query = load_labelled_folder(args.query, classes=gallery.classes)
    if args.query_limit is not None:
        query = query.subset(range(min(args.query_limit, len(query))))
    return gallery, query


def evaluate(
    embedder: Embedder, gallery: LabelledImages, query: LabelledImages | None, args: argparse.Namespace
) -> dict[str, Any]:
    start = time.perf_counter()
    g = embedder.embed(gallery.images)
    q = embedder.embed(query.images) if query is not None else g
    seconds = time.perf_counter() - start
    metrics = retrieval_metrics(
        q,
        query.labels if query is not None else gallery.labels,
        g,
        gallery.labels,
        knn_k=args.knn_k,
        recall_k=args.recall_k,
        exclude_self=query is None,
        with_map=not args.no_map,
    )
    result: dict[str, Any] = {
        "model": embedder.name,
        "dim": int(g.shape[1]),
        "gallery": len(gallery),
        "queries": len(q),
        "embed_seconds": round(seconds, 1),
        **metrics,
    }
    if args.near_dup:
        pool = query if query is not None else gallery
        transforms = [t.strip() for t in args.near_dup_transforms.split(",") if t.strip()]
        result["near_dup"] = near_duplicate_recall(
            embedder, pool.images, n=args.near_dup_n, ks=args.recall_k, transforms=transforms,
            seed=args.seed, index_embeddings=q,
        )  # fmt: skip
    return result


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per model, percentages."""
    metric_keys = [k for k in results[0] if k.startswith(("knn@", "recall@")) or k == "mAP"]
    dup_keys = []
    for r in results:
        for t, vals in r.get("near_dup", {}).items():
            dup_keys.extend(f"dup-{t} {k.replace('recall', 'R')}" for k in vals if k == "recall@1")
    dup_keys = list(dict.fromkeys(dup_keys))
    header = ["model", "dim", *metric_keys, *dup_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [str(r["model"]), str(r["dim"])] + [f"{100 * r[k]:.2f}" for k in metric_keys]
        for key in dup_keys:
            t = key.split(" ")[0].removeprefix("dup-")
            value = r.get("near_dup", {}).get(t, {}).get("recall@1")
            cells.append("" if value is None else f"{100 * value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        gallery, query = load_data(args)
        if gallery.skipped.count:
            print(f"gallery: {gallery.skipped.summary()}", file=sys.stderr)
        if query is not None and query.skipped.count:
            print(f"query: {query.skipped.summary()}", file=sys.stderr)
        results = []
        for spec in args.model:
            embedder = open_embedder(
                spec, device=args.device, batch_size=args.batch_size, cache_dir=args.cache_dir,
                pixel_size=args.pixel_size, input_size=args.input_size, resize_size=args.resize_size,
            )  # fmt: skip
            result = evaluate(embedder, gallery, query, args)
            result["spec"] = spec
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    except ValueError as exc:  # includes ModelFileError
        print(f"lookalike eval: error: {exc}", file=sys.stderr)
        return 2
    protocol = "leave-one-out" if query is None else f"{len(query)} queries"
    print(f"{args.data}: gallery {len(gallery)} images, {protocol}, {len(gallery.classes)} classes")
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"data": args.data, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
