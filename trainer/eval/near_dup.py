"""Near-duplicate recall: find an image's original after a crop, a rescale, JPEG or colour changes.

The use case of "search by image" in a catalogue: the query is a re-posted, re-cropped or
re-compressed copy of a registered image. For ``n`` originals drawn from the index, each
transform makes one copy per original; recall@k is the fraction of copies whose original is
among the k nearest of the whole index (the other images act as distractors).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from lookalike.trainer.eval.embedders import Embedder
from lookalike.trainer.eval.metrics import duplicate_recall
from PIL import Image, ImageEnhance

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]


def crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep 60-85% of each side, at a random position."""
    w, h = img.size
    cw, ch = max(1, round(w * rng.uniform(0.6, 0.85))), max(1, round(h * rng.uniform(0.6, 0.85)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((left, top, left + cw, top + ch))


def rescale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Down to 40-70% or up to 150-200% of the size."""
    f = rng.uniform(0.4, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.0)
    return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BICUBIC)


def jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 15-40."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(15, 41)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def color_jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by 0.6-1.4."""
    out = img.convert("RGB")
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(rng.uniform(0.6, 1.4))
    return out


def combined(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return jpeg(color_jitter(rescale(crop(img, rng), rng), rng), rng)


TRANSFORMS: dict[str, Transform] = {
    "crop": crop,
    "rescale": rescale,
    "jpeg": jpeg,
    "jitter": color_jitter,
    "all": combined,
}


def near_duplicate_recall(
    embedder: Embedder,
    images: Sequence[Image.Image],
    *,
    n: int = 200,
    ks: Sequence[int] = (1, 5, 10),
    transforms: Sequence[str] = tuple(TRANSFORMS),
    seed: int = 0,
    index_embeddings: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """``{transform: {"recall@1": .., ...}}`` for ``n`` originals drawn from ``images`` (the index)."""
    unknown = sorted(set(transforms) - set(TRANSFORMS))
    if unknown:
        raise ValueError(f"unknown near-duplicate transform(s) {unknown}; choose from {sorted(TRANSFORMS)}")
    rng = np.random.default_rng(seed)
    index = index_embeddings if index_embeddings is not None else embedder.embed(images)
    targets = rng.choice(len(images), size=min(n, len(images)), replace=False)
    results = {}
    for name in transforms:
        t_rng = np.random.default_rng([seed, list(TRANSFORMS).index(name)])
        copies = [TRANSFORMS[name](images[i], t_rng) for i in targets]
        results[name] = duplicate_recall(embedder.embed(copies), index, targets, ks)
    return results
