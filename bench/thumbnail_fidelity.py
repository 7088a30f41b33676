"""How small can the kept copy of a registered image be and still re-embed like the original?

Every candidate thumbnail setting (format x longer side x quality) is applied to real photos and
to the labelled sets the other benches use, through ``server/core/embedding/thumbnails.py``, and
both the original bytes and the thumbnail bytes are embedded by the server's own embedder
(``Embedder.embed``: the same decode, JPEG draft, preprocessing and execution mode as a served
request) with the server's default model. For each candidate it prints:

- cosine between each thumbnail's vector and its original's: median and 5th percentile, per set;
- mAP of the labelled sets when the gallery is re-embedded from thumbnails (queries stay originals,
  as after ``lookalike db reindex``), against the same with original galleries, in points;
- mean bytes per image, thumbnails against originals.

Then the smallest candidate (mean bytes on the photos) whose median cosine is >= 0.995 on every set
and whose mAP is within 0.3 points of the originals' on every labelled set.

    python bench/thumbnail_fidelity.py [--json] [--formats webp,jpeg] [--sides 256,320,384,448,512]
                                       [--qualities 90,95,97] [--fashion-gallery 300 --fashion-queries 200]

Sets (all offline): ``photos``: scikit-image's photos at full size (PNG) and Debian
``mate-backgrounds`` (the JPEG files as shipped, 1.9-4 Mpx), each mate photo also cut into a full-height
1:2 strip and a full-width 2:1 band (the shorter side decides what the stretch to 224 x 224 keeps);
``emoji-google`` (leave-one-out) and ``emoji-cross`` (Twemoji queries, Noto gallery), 64 px PNG with
alpha; ``icons-tabler`` (leave-one-out), 240 px line art with alpha (``make datasets``);
``fashion-mnist``: a subset, the first N train images as gallery and the first M test images as
queries (``apt-get install dataset-fashion-mnist``). A set that is not installed is left out, and
said so. The labelled sets' images are all smaller than every candidate side, so they measure the
encoder's loss only (for ``webp``, the small-image rule of ``make_thumbnail``: an image needing no
downscale is kept lossless when that is no bigger than its upload); the photos measure the downscale.
The run takes about 10 minutes on a 2-core CPU: the labelled sets are embedded only for candidates
that pass on the photos (``--all``: for every one), and the Fashion-MNIST part is a subset.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import harness
import numpy as np

TARGET_COSINE = 0.995
MAP_TOLERANCE = 0.3  # points
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "cat",
)  # fmt: skip


@dataclass
class Labelled:
    """A retrieval set: gallery bytes and labels; queries (None: leave-one-out over the gallery)."""

    name: str
    gallery: list[bytes]
    labels: np.ndarray
    queries: list[bytes] | None = None
    query_labels: np.ndarray | None = None
    note: str = ""


@dataclass
class Vectors:
    """Vectors by the sha256 of the bytes embedded: a thumbnail equal to one seen before is not embedded again."""

    embed: Callable[[Sequence[bytes]], np.ndarray]
    cache: dict[bytes, np.ndarray] = field(default_factory=dict)
    embedded: int = 0

    def __call__(self, items: Sequence[bytes], batch: int = 64) -> np.ndarray:
        keys = [hashlib.sha256(b).digest() for b in items]
        todo = list({k: b for k, b in zip(keys, items, strict=True) if k not in self.cache}.items())
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            for (k, _), v in zip(chunk, self.embed([b for _, b in chunk]), strict=True):
                self.cache[k] = v
            self.embedded += len(chunk)
        return np.stack([self.cache[k] for k in keys])


def png(image: object) -> bytes:
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def photos() -> tuple[list[tuple[str, bytes]], str]:
    """Real photos as uploaded: scikit-image's (PNG of the array) and mate-backgrounds' files, with strips."""
    from PIL import Image

    out = []
    for name in SKIMAGE_PHOTOS:
        try:
            out.append((name, png(harness.photo(name))))
        except Exception:  # a scikit-image build without this photo
            continue
    mate = sorted(harness.MATE_PHOTOS.glob("*.jpg")) if harness.MATE_PHOTOS.is_dir() else []
    for path in mate:
        data = path.read_bytes()
        out.append((path.stem, data))
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
        w, h = rgb.size
        strip = rgb.crop(((w - h // 2) // 2, 0, (w - h // 2) // 2 + h // 2, h))  # 1:2 portrait, full height
        band = rgb.crop((0, (h - w // 2) // 2, w, (h - w // 2) // 2 + w // 2))  # 2:1 landscape, full width
        for suffix, part in (("strip", strip), ("band", band)):
            buf = io.BytesIO()
            part.save(buf, "JPEG", quality=92)
            out.append((f"{path.stem}/{suffix}", buf.getvalue()))
    note = f"{len(out)} photos ({len(mate)} mate-backgrounds files + 2 strips each)"
    if not mate:
        note += "; mate-backgrounds not installed (apt-get install mate-backgrounds): scikit-image's only"
    return out, note


def labelled_sets(fashion_gallery: int, fashion_queries: int, say: Callable[[str], None]) -> list[Labelled]:
    from lookalike.trainer.eval import domains, fashion_mnist

    # Where ``make datasets`` puts them, unless LOOKALIKE_DATASETS_DIR says otherwise.
    root = None if os.environ.get(domains.DATASETS_ENV) else harness.REPO / ".datasets"
    out = []
    try:
        sel = domains.emoji_selection(root)
        classes = sorted({sub for _, sub in sel})
        labels = np.array([classes.index(sub) for _, sub in sel])
        google, twitter = (
            [(domains.emoji_package_dir(v, root) / "img" / v / "64" / name).read_bytes() for name, _ in sel]
            for v in ("google", "twitter")
        )
        out.append(Labelled("emoji-google", google, labels, note="leave-one-out"))
        out.append(Labelled("emoji-cross", google, labels, twitter, labels, note="Twemoji queries, Noto gallery"))
    except ValueError as exc:
        say(f"emoji sets left out: {exc}")
    try:
        sel = domains.tabler_selection(root)
        _, png_dir = domains.tabler_package_dirs(root)
        classes = sorted({c for _, c in sel})
        icons = [(png_dir / "icons" / "outline" / f"{name}.png").read_bytes() for name, _ in sel]
        out.append(Labelled("icons-tabler", icons, np.array([classes.index(c) for _, c in sel]), note="leave-one-out"))
    except ValueError as exc:
        say(f"icons-tabler left out: {exc}")
    try:
        gx, gy = fashion_mnist.load_arrays("train")
        qx, qy = fashion_mnist.load_arrays("test")
        out.append(
            Labelled(
                "fashion-mnist",
                [png(a) for a in gx[:fashion_gallery]],
                gy[:fashion_gallery].astype(np.int64),
                [png(a) for a in qx[:fashion_queries]],
                qy[:fashion_queries].astype(np.int64),
                note=f"subset: first {fashion_gallery} train as gallery, first {fashion_queries} test as queries",
            )
        )
    except (OSError, ValueError) as exc:
        say(f"fashion-mnist left out ({exc}); apt-get install dataset-fashion-mnist")
    return out


def mean_ap(s: Labelled, gallery: np.ndarray, queries: np.ndarray) -> float:
    from lookalike.trainer.eval.metrics import retrieval_metrics

    loo = s.queries is None
    q_labels = s.labels if loo else s.query_labels
    assert q_labels is not None
    m = retrieval_metrics(queries, q_labels, gallery, s.labels, knn_k=(1,), recall_k=(1,), exclude_self=loo)
    return 100.0 * m["mAP"]


def cell(row: dict[str, object], name: str) -> str:
    """``cosine median / p5 / mAP change / bytes`` of one set in one row; "not scored" where it was skipped."""
    if f"{name}_dmap" not in row:
        return "not scored (fails on photos)"
    return (f"{row[f'{name}_cos_median']:.4f} / {row[f'{name}_cos_p5']:.4f} / {row[f'{name}_dmap']:+.2f} / "
            f"{row[f'{name}_bytes']:,.0f} B")  # fmt: skip


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)  # both L2-normalised by the embedder


def main(argv: list[str] | None = None) -> int:
    ap = harness.arguments(__doc__)
    ap.add_argument("--formats", default="webp,jpeg")
    ap.add_argument("--sides", default="256,320,384,448,512")
    ap.add_argument("--qualities", default="90,95,97")
    ap.add_argument("--fashion-gallery", type=int, default=300)
    ap.add_argument("--fashion-queries", type=int, default=200)
    ap.add_argument("--all", action="store_true", help="score the labelled sets for every candidate (default: only "
                    "those that pass on the photos: the others fail whatever the sets say)")  # fmt: skip
    ap.add_argument("--cpu-exec", default=None, help="the embedder's --cpu-exec (default: the server's)")
    args = ap.parse_args(argv)
    results = harness.Results(args)
    say = results.say

    import torch
    from lookalike.server.core.embedding.default_model import default_model_path
    from lookalike.server.core.embedding.embedder import Embedder
    from lookalike.server.core.embedding.thumbnails import make_thumbnail
    from lookalike.server.defaults import CPU_EXEC

    t0 = time.monotonic()
    embedder = Embedder(default_model_path(), cpu_exec=args.cpu_exec or CPU_EXEC, max_wait_s=0.0)
    vec = Vectors(embedder.embed)
    say(f"model {embedder.model_name} on {embedder.device} ({embedder.execution}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads")  # fmt: skip
    photo_items, photo_note = photos()
    sets = labelled_sets(args.fashion_gallery, args.fashion_queries, say)
    say(f"photos: {photo_note}")
    for s in sets:
        n_q = len(s.queries) if s.queries is not None else len(s.gallery)
        say(f"{s.name}: {len(s.gallery)} gallery, {n_q} queries ({s.note})")

    if not args.all:
        say("the labelled sets are scored only for candidates that pass on the photos (--all: every candidate)")
    photo_bytes = [b for _, b in photo_items]
    orig = {"photos": vec(photo_bytes)}
    base_map = {}
    for s in sets:
        orig[s.name] = vec(s.gallery)
        q = vec(s.queries) if s.queries is not None else orig[s.name]
        orig[s.name + "/queries"] = q
        base_map[s.name] = mean_ap(s, orig[s.name], q)
    orig_bytes = {"photos": float(np.mean([len(b) for b in photo_bytes]))}
    orig_bytes.update({s.name: float(np.mean([len(b) for b in s.gallery])) for s in sets})
    say(f"originals embedded in {time.monotonic() - t0:.0f} s; mean bytes: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in orig_bytes.items())
        + "; mAP of originals: " + ", ".join(f"{k} {v:.2f}" for k, v in base_map.items()))  # fmt: skip

    candidates = [
        (fmt, side, q)
        for fmt in args.formats.split(",")
        for side in (int(x) for x in args.sides.split(","))
        for q in (int(x) for x in args.qualities.split(","))
    ]
    rows = []
    for fmt, side, quality in candidates:
        t = time.monotonic()

        def thumb(data: bytes, fmt: str = fmt, side: int = side, quality: int = quality) -> bytes:
            return make_thumbnail(data, max_side=side, quality=quality, fmt=fmt)

        row: dict[str, object] = {"format": fmt, "max_side": side, "quality": quality}
        ok = True
        thumbs = [thumb(b) for b in photo_bytes]
        c = cosines(orig["photos"], vec(thumbs))
        row["photos_cos_median"], row["photos_cos_p5"] = float(np.median(c)), float(np.percentile(c, 5))
        row["photos_cos_min"] = float(c.min())
        row["photos_worst"] = photo_items[int(c.argmin())][0]
        row["photos_bytes"] = float(np.mean([len(b) for b in thumbs]))
        ok &= row["photos_cos_median"] >= TARGET_COSINE
        for s in sets if ok or args.all else []:  # a candidate failing on the photos fails whatever the rest says
            tg = [thumb(b) for b in s.gallery]
            g = vec(tg)
            c = cosines(orig[s.name], g)
            d_map = mean_ap(s, g, orig[s.name + "/queries"]) - base_map[s.name]
            row[f"{s.name}_cos_median"], row[f"{s.name}_cos_p5"] = float(np.median(c)), float(np.percentile(c, 5))
            row[f"{s.name}_dmap"] = d_map
            row[f"{s.name}_bytes"] = float(np.mean([len(b) for b in tg]))
            ok &= float(np.median(c)) >= TARGET_COSINE and d_map >= -MAP_TOLERANCE
        row["meets"] = bool(ok)
        row["seconds"] = round(time.monotonic() - t, 1)
        rows.append(results.add(row))
        if results.table:
            labelled = "  ".join(f"{s.name} {cell(row, s.name)}" for s in sets)
            print(f"{fmt:>4} {side:>4} q{quality:<3} photos cos {row['photos_cos_median']:.4f}/"
                  f"{row['photos_cos_p5']:.4f} (min {row['photos_cos_min']:.4f} {row['photos_worst']}) "
                  f"{row['photos_bytes']:>8,.0f} B  {labelled}  {'MEETS' if ok else '-'}", flush=True)  # fmt: skip

    say(f"{vec.embedded} images embedded, {time.monotonic() - t0:.0f} s in all")
    heads = ["format", "side", "q", "photos cos med / p5", "photos bytes", "x orig"]
    heads += [f"{s.name} cos med / p5 / dmAP / bytes" for s in sets] + ["meets"]
    table = [
        [r["format"], r["max_side"], r["quality"], f"{r['photos_cos_median']:.4f} / {r['photos_cos_p5']:.4f}",
         f"{r['photos_bytes']:,.0f}", f"{r['photos_bytes'] / orig_bytes['photos']:.3f}"]
        + [cell(r, s.name) for s in sets]
        + ["yes" if r["meets"] else ""]
        for r in rows
    ]  # fmt: skip
    results.print_table("\n" + harness.markdown(heads, table))
    passing = [r for r in rows if r["meets"]]
    if not passing:
        say("no candidate meets both criteria")
        return 1
    best = min(passing, key=lambda r: r["photos_bytes"])
    say(f"smallest candidate meeting median cosine >= {TARGET_COSINE} on every set and mAP within "
        f"{MAP_TOLERANCE} points on every labelled set: {best['format']} max_side={best['max_side']} "
        f"quality={best['quality']}: {best['photos_bytes']:,.0f} bytes per photo "
        f"({best['photos_bytes'] / orig_bytes['photos']:.1%} of the originals' {orig_bytes['photos']:,.0f}), "
        f"median cosine {best['photos_cos_median']:.4f}")  # fmt: skip
    embedder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
