"""Recall@10 of compact storage (f16, bf16, i8) against exact float32, on REAL embeddings.

Decides the default storage of new databases (issue 9): the server's default model
(EfficientNet-Lite0 ImageNet, 1280-d) embeds real images available offline:

- gallery: Fashion-MNIST test photos, Google emoji, Tabler icons, and the scikit-image photos
  with augmented crops of each (crop, rescale, JPEG, colour jitter);
- queries: Fashion-MNIST training photos, Twitter emoji (the same things drawn by another
  vendor: near-duplicates of gallery items) and fresh crops of each photo.

``--size`` scales the counts (1.0: 10,000 / 3,802 / 3,000 / 20 crops in the gallery, 500 / 500 / 5
crops as queries; the default model embeds about 100 images a minute on a loaded 2-core machine).

Each storage runs through the native kernel exactly as the server runs it (i8 with its re-rank
of 4*k candidates from float32); truth is a float64 numpy top-10. ``recall_ties`` also counts a
returned image whose exact score equals the 10th best (a tie, not an error).

    .venv/bin/python bench/storage_recall.py --size 0.25 --cache runs/storage_recall.npz [--json]
"""

from __future__ import annotations

import gzip
import random
import sys
from pathlib import Path

import harness
import numpy as np
from harness import encode
from PIL import Image, ImageEnhance

from lookalike import native

EMOJI = Path.home() / ".cache/lookalike/datasets/node_modules"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def fmnist(name: str, count: int) -> list[bytes]:
    raw = gzip.open(FMNIST / f"{name}-images-idx3-ubyte.gz").read()[16:]
    pixels = np.frombuffer(raw, np.uint8).reshape(-1, 28, 28)[:count]
    return [encode(Image.fromarray(p).convert("RGB"), "PNG") for p in pixels]


def folder(path: Path, count: int) -> list[bytes]:
    files = sorted(path.glob("*.png"))[:count]
    return [encode(Image.open(f).convert("RGB"), "PNG") for f in files]


def crops(img: Image.Image, count: int, rng: random.Random) -> list[bytes]:
    out = []
    w, h = img.size
    for _ in range(count):
        s = rng.uniform(0.5, 0.9)
        cw, ch = int(w * s), int(h * s)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        c = img.crop((x, y, x + cw, y + ch)).resize((int(cw * rng.uniform(0.5, 1.0)), int(ch * rng.uniform(0.5, 1.0))))
        c = ImageEnhance.Color(c).enhance(rng.uniform(0.7, 1.3))
        c = ImageEnhance.Brightness(c).enhance(rng.uniform(0.8, 1.2))
        out.append(harness.jpeg(c, quality=rng.randint(50, 90)))
    return out


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "hubble_deep_field", "immunohistochemistry",
          "motorcycle", "retina", "page", "text", "moon", "horse", "logo", "colorwheel", "brick", "grass", "gravel",
          "rough_wall", "clock", "coins", "eagle")  # fmt: skip


def embed_all(cache: Path, size: float) -> tuple[np.ndarray, np.ndarray]:
    if cache.exists():
        z = np.load(cache)
        return z["gallery"], z["queries"]
    from lookalike.server.core.embedding.default_model import default_model_path
    from lookalike.server.core.embedding.embedder import Embedder

    rng = random.Random(0)
    pics = [Image.fromarray(a) for a in harness.photos(PHOTOS, skip_missing=True)]

    def c(count: int) -> int:
        return max(1, round(count * size))

    gallery = fmnist("t10k", c(10_000)) + folder(EMOJI / "emoji-datasource-google/img/google/64", c(3802))
    gallery += folder(EMOJI / "@tabler/icons-png/icons/outline", c(3000))
    queries = fmnist("train", c(500)) + folder(EMOJI / "emoji-datasource-twitter/img/twitter/64", c(500))
    for p in pics:
        gallery.append(encode(p, "PNG"))
        gallery += crops(p, c(20), rng)
        queries += crops(p, c(5), rng)
    embedder = Embedder(default_model_path())
    print(f"embedding {len(gallery)} gallery and {len(queries)} query images ...", file=sys.stderr, flush=True)

    def embed(images: list[bytes]) -> np.ndarray:
        return np.concatenate([embedder.embed(images[a : a + 64]) for a in range(0, len(images), 64)])

    g, q = embed(gallery), embed(queries)
    embedder.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, gallery=g, queries=q)
    return g, q


def main() -> None:
    ap = harness.arguments(__doc__)
    ap.add_argument("--cache", type=Path, default=Path("runs/storage_recall.npz"))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--size", type=float, default=1.0, help="scales the image counts")
    args = ap.parse_args()
    k = args.k
    out = harness.Results(args, show=lambda r: (
        f"{r['storage']:>14}  recall@{k} {r['recall_at_k']:.5f}  with ties {r['recall_ties']:.5f}  "
        f"worst query {r['min_recall']:.2f}  same order {r['same_order']:.4f}  "
        f"({r['gallery']} x {r['d']}, {r['queries']} queries)"))  # fmt: skip
    gallery, queries = embed_all(args.cache, args.size)
    exact = queries.astype(np.float64) @ gallery.astype(np.float64).T
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    kth = np.take_along_axis(exact, truth[:, -1:], axis=1)[:, 0]
    variants = [("f32", {}), ("f16", {}), ("bf16", {}), ("i8", {"rerank": 4}), ("i8", {"rerank": 0})]
    for storage, opt in variants:
        if storage == "f32":
            _, ids = native.topk(np.ascontiguousarray(gallery), queries, k)
        elif storage == "f16":
            _, ids = native.topk(gallery.astype(np.float16), queries, k)
        elif storage == "bf16":
            _, ids = native.topk(native.to_bfloat16(gallery), queries, k)
        else:
            q8, scales = native.quantize_int8(gallery)
            if opt["rerank"]:
                _, ids = native.topk_reranked(q8, queries, k, full=gallery, candidates=opt["rerank"] * k, scales=scales)
            else:
                _, ids = native.topk(q8, queries, k, scales=scales)
        hit = harness.recall_per_query(ids, truth)
        tie = [np.mean(exact[i, ids[i]] >= kth[i] - 1e-7) for i in range(len(queries))]
        same = float(np.mean([list(ids[i]) == list(truth[i]) for i in range(len(queries))]))
        name = storage + ("+rerank4k" if opt.get("rerank") else ("-norerank" if storage == "i8" else ""))
        out.add({"storage": name, "gallery": len(gallery), "queries": len(queries), "d": gallery.shape[1],
                 "k": k, "recall_at_k": round(float(np.mean(hit)), 5), "recall_ties": round(float(np.mean(tie)), 5),
                 "min_recall": round(float(np.min(hit)), 3), "same_order": round(same, 4)})  # fmt: skip


if __name__ == "__main__":
    main()
