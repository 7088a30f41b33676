"""``lookalike prep``: turn an image list (or folder) into train/test tar shards.

Mirrors the options of PAI's "data to TFRecord" component (table 1 of the PAI solution):
output path and prefix, test split ratio, maximum image side (and a separate one for the test
split), image encoding, read concurrency and images per shard. Shards follow the
``webdataset`` layout; ``prep.json`` is written last and lists shards, counts, skipped images
and the options used, so ``lookalike train --data.source DIR`` can read them.

Example::

    lookalike prep demo_img_list.txt --root /data/df2 --output shards/ --prefix df2 \\
        --test-ratio 0.1 --max-side 512 --per-shard 1000 --workers 10
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lookalike.trainer.data.images import UnreadableImage, read_bytes
from lookalike.trainer.data.oss import OssReader, is_oss
from lookalike.trainer.data.shards import shard_name, write_manifest, write_shard_index
from lookalike.trainer.data.skips import SkipLog
from lookalike.trainer.data.sources import list_folder, read_image_list
from PIL import Image

ENCODINGS = ("jpg", "png", "keep")
_KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Encoded:
    index: int
    ref: str
    suffix: str
    data: bytes
    width: int
    height: int


def encode_image(
    index: int, ref: str, *, max_side: int | None, encoding: str, quality: int, oss: OssReader | None = None
) -> Encoded:
    """Read, decode, shrink to ``max_side`` (aspect kept) and encode one image."""
    raw = read_bytes(ref, oss)
    try:
        with Image.open(io.BytesIO(raw)) as src:
            src.load()
            fmt = src.format or ""
            img = src.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(ref, f"{type(exc).__name__}: {exc}") from exc
    resized = max_side is not None and max(img.size) > max_side
    if resized:
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    if encoding == "keep" and not resized and fmt in _KEEP_FORMATS:
        return Encoded(index, ref, _KEEP_FORMATS[fmt], raw, img.width, img.height)
    out = io.BytesIO()
    if encoding == "png":
        img.save(out, format="PNG")
        suffix = "png"
    else:
        img.save(out, format="JPEG", quality=quality)
        suffix = "jpg"
    return Encoded(index, ref, suffix, out.getvalue(), img.width, img.height)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map`` over a thread pool, in input order, with a bounded number of pending results."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _SplitWriter:
    """Writes one split into shards of ``per_shard`` samples each."""

    def __init__(self, folder: Path, prefix: str, split: str, per_shard: int) -> None:
        self.folder, self.prefix, self.split, self.per_shard = folder, prefix, split, per_shard
        self.shards: list[str] = []
        self.count = 0
        self._writer: Any = None

    def write(self, item: Encoded) -> None:
        import webdataset as wds

        if self._writer is None or self.count % self.per_shard == 0:
            self.close()
            name = shard_name(self.prefix, self.split, len(self.shards))
            self._writer = wds.TarWriter(str(self.folder / name))
            self.shards.append(name)
        meta = {"src": item.ref, "index": item.index, "width": item.width, "height": item.height}
        self._writer.write({"__key__": f"{item.index:09d}", item.suffix: item.data, "json": meta})
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            write_shard_index(self.folder / self.shards[-1])


def split_indices(n: int, test_ratio: float, seed: int) -> set[int]:
    """Indices of the test split: ``round(n * test_ratio)`` entries drawn with ``seed``."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return set(order[: round(n * test_ratio)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lookalike prep",
        description="Convert an image list or folder into webdataset tar shards (train/test split).",
    )
    p.add_argument("source", help="image list file (local or oss://), or a folder of images")
    p.add_argument("--output", "-o", required=True, help="output folder for shards and prep.json")
    p.add_argument("--prefix", default="data", help="shard file name prefix (default: data)")
    p.add_argument("--root", default=None, help="prefix for relative list entries (default: the list's folder)")
    p.add_argument(
        "--test-ratio",
        type=float,
        default=0.0,
        help="fraction of images for the test split, 0 <= r < 1 (default: 0, all train)",
    )
    p.add_argument("--max-side", type=int, default=None, help="shrink train images whose longer side exceeds this")
    p.add_argument("--test-max-side", type=int, default=None, help="same for test images (default: --max-side)")
    p.add_argument(
        "--encoding",
        default="jpg",
        choices=ENCODINGS,
        help="jpg or png re-encode; keep stores original JPEG/PNG/WebP bytes when not resized",
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default: 95)")
    p.add_argument("--per-shard", type=int, default=1000, help="images per shard (default: 1000, as PAI)")
    p.add_argument("--workers", type=int, default=10, help="concurrent readers/encoders (default: 10, as PAI)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check(args: argparse.Namespace) -> None:
    if not 0.0 <= args.test_ratio < 1.0:
        raise ValueError(f"--test-ratio must be in [0, 1), got {args.test_ratio}")
    for name in ("max_side", "test_max_side"):
        value = getattr(args, name)
        if value is not None and value < 8:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 8 pixels, got {value}")
    if args.per_shard < 1:
        raise ValueError(f"--per-shard must be at least 1, got {args.per_shard}")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if not 1 <= args.quality <= 100:
        raise ValueError(f"--quality must be in [1, 100], got {args.quality}")


def prep(args: argparse.Namespace) -> dict[str, Any]:
    """Write the shards and the manifest; return the manifest."""
    from tqdm import tqdm

    _check(args)
    oss = OssReader()
    if not is_oss(args.source) and Path(args.source).is_dir():
        refs = list_folder(args.source)
    else:
        refs = read_image_list(args.source, args.root, oss)
    if not refs:
        raise ValueError(f"{args.source} holds no images")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    test = split_indices(len(refs), args.test_ratio, args.seed)
    test_side = args.test_max_side if args.test_max_side is not None else args.max_side
    writers = {s: _SplitWriter(out, args.prefix, s, args.per_shard) for s in ("train", "test")}
    skipped = SkipLog()

    def work(item: tuple[int, str]) -> Encoded | UnreadableImage:
        index, ref = item
        try:
            side = test_side if index in test else args.max_side
            return encode_image(index, ref, max_side=side, encoding=args.encoding, quality=args.quality, oss=oss)
        except UnreadableImage as exc:
            return exc

    results = ordered_map(work, enumerate(refs), args.workers)
    for result in tqdm(results, total=len(refs), desc="prep", unit="img", disable=args.quiet):
        if isinstance(result, UnreadableImage):
            skipped.add(result.ref, result.reason)
        else:
            writers["test" if result.index in test else "train"].write(result)
    for writer in writers.values():
        writer.close()
    manifest = {
        "source": args.source,
        "entries": len(refs),
        "splits": {s: {"count": w.count, "shards": w.shards} for s, w in writers.items()},
        "skipped": skipped.to_dict(),
        "options": {
            "prefix": args.prefix,
            "root": args.root,
            "test_ratio": args.test_ratio,
            "max_side": args.max_side,
            "test_max_side": test_side,
            "encoding": args.encoding,
            "quality": args.quality,
            "per_shard": args.per_shard,
            "seed": args.seed,
        },
    }
    write_manifest(out, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = prep(args)
    except ValueError as exc:
        print(f"lookalike prep: error: {exc}", file=sys.stderr)
        return 2
    splits = manifest["splits"]
    train, test = splits["train"], splits["test"]
    print(
        f"wrote {train['count']} train images in {len(train['shards'])} shard(s) and "
        f"{test['count']} test images in {len(test['shards'])} shard(s) to {args.output}; "
        f"skipped {manifest['skipped']['count']} unreadable"
    )
    if train["count"] + test["count"] == 0:
        print("lookalike prep: error: no image could be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
