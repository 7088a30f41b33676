"""Similarity tiers: the cosine thresholds of one model that say duplicate, near-duplicate or similar.

A cosine means nothing on its own: 0.9 is a crop for one model and an unrelated image for another,
so a duplicate finder needs each model's own thresholds, stored in its file (``EmbedderMeta.tiers``).
They are measured on images without labels by making copies whose relation is known:

- a **duplicate copy** is resized (0.5-2x, log-uniform) and re-encoded as JPEG (quality 30-90);
- a **near copy** is cropped (60-85% of each side) and colour-shifted (brightness, contrast and
  saturation 0.6-1.4), the transforms of ``trainer/eval/near_dup.py``;
- **unrelated** pairs are pairs of different originals (images that look like re-encoded copies of
  one another, by a 16x16 thumbnail test independent of the model, are dropped first: a user's
  own images hold duplicates, and counting them as unrelated would push every threshold up).

Rules, with D, N, U the cosines of duplicate copies, near copies and unrelated pairs (served
vectors: the file's domain centre applied) and q_p the p-quantile:

- ``similar = q_0.99(U)``: "similar" is the closest 1% of pairs of different images. With no labels
  there is no other definition of visually close; the labelled sets measure what it gives (bench/tiers.py).
- ``near = max(q_0.05(N), q_0.999(U))``: 95% of edited copies count as near or closer, unless that lets
  more than 1 in 1000 pairs of different images in. The cap is that strict because unrelated pairs
  outnumber copies in any collection (n^2 against n) and calling two different images copies of one
  another is the costly mistake.
- ``duplicate = max(q_0.02(D), q_0.95(N))``: 98% of re-encoded copies count as duplicates, unless that
  calls more than 5% of edited copies duplicates. Confusing the two kinds of copy is the milder mistake;
  with ImageNet features it is the usual limit (a JPEG re-encode moves a vector about as far as a crop).

Then each tier is kept at least :data:`MIN_GAP` above the next and at most 1 (``calibration["clamped"]``
says when a rule was overridden and why). Values are rounded to 3 decimals, so calibrating twice on
the same images, seed and library versions gives the same file.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lookalike.trainer.eval.near_dup import color_jitter, crop
from PIL import Image

from lookalike.modelfile import TIER_NAMES, EmbedderMeta, output_vectors, preprocess, to_rgb

Embed = Callable[[list[Image.Image]], np.ndarray]

METHOD = "tiers-v1"  # bump with any change of the rules or the copies: it names the default model's cache file
SIMILAR_UNRELATED_QUANTILE = 0.99
NEAR_RECALL_QUANTILE = 0.05
NEAR_UNRELATED_QUANTILE = 0.999
DUPLICATE_RECALL_QUANTILE = 0.02
DUPLICATE_NEAR_QUANTILE = 0.95
MIN_GAP = 0.01
MIN_IMAGES = 8  # fewer distinct images than this give no usable quantiles
PERCENTILES = (1, 2, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)
RULES = {
    "duplicate": "max(p2 of duplicate copies, p95 of near copies)",
    "near": "max(p5 of near copies, p99.9 of unrelated pairs)",
    "similar": "p99 of unrelated pairs",
}
COPIES = {
    "duplicate": "resized 0.5-2x (log-uniform, bicubic), JPEG quality 30-90",
    "near": "crop 60-85% of each side, brightness/contrast/saturation 0.6-1.4",
}
_THUMB = 16
_SAME_IMAGE_MAD = 6.0  # mean absolute difference of 16x16 RGB thumbnails (0-255) below which two images are copies
_RELATION_RANK = {"duplicate": 3, "near": 2, "similar": 1, "unrelated": 0}


def duplicate_copy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``image`` resized by 0.5-2x and re-encoded as JPEG at quality 30-90: the same picture, saved again."""
    img = to_rgb(image)
    f = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(30, 91)))
    with Image.open(io.BytesIO(buf.getvalue())) as out:
        return out.convert("RGB")


def near_copy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``image`` cropped to 60-85% of each side and colour-shifted: an edited copy."""
    return color_jitter(crop(to_rgb(image), rng), rng)


def distinct_images(images: Sequence[Image.Image]) -> list[int]:
    """Indices of ``images`` without the later of any two whose 16x16 thumbnails nearly match (copies)."""
    thumbs = np.stack([np.asarray(to_rgb(im).resize((_THUMB, _THUMB), Image.BOX), np.float32).ravel() for im in images])
    kept: list[int] = []
    for i in range(len(images)):
        if not kept or np.abs(thumbs[kept] - thumbs[i]).mean(axis=1).min() > _SAME_IMAGE_MAD:
            kept.append(i)
    return kept


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q)) if values.size else float("nan")


def choose_tiers(duplicate: np.ndarray, near: np.ndarray, unrelated: np.ndarray) -> tuple[dict[str, float], list[str]]:
    """The module's rules on the three similarity samples; ``(tiers, notes on any clamping)``."""
    similar = _quantile(unrelated, SIMILAR_UNRELATED_QUANTILE)
    near_t = max(_quantile(near, NEAR_RECALL_QUANTILE), _quantile(unrelated, NEAR_UNRELATED_QUANTILE))
    dup = max(_quantile(duplicate, DUPLICATE_RECALL_QUANTILE), _quantile(near, DUPLICATE_NEAR_QUANTILE))
    notes = []
    if not similar > -1.0 + 2 * MIN_GAP:
        notes.append(f"similar raised from {similar:.3f} to {-1 + 2 * MIN_GAP:.3f} (a cosine above -1 is needed)")
        similar = -1.0 + 2 * MIN_GAP
    if near_t < similar + MIN_GAP:
        notes.append(f"near raised from {near_t:.3f} to {similar + MIN_GAP:.3f}: at least {MIN_GAP} above similar")
        near_t = similar + MIN_GAP
    if dup < near_t + MIN_GAP:
        notes.append(f"duplicate raised from {dup:.3f} to {near_t + MIN_GAP:.3f}: at least {MIN_GAP} above near")
        dup = near_t + MIN_GAP
    if dup > 1.0:  # unrelated images as close as copies: squeeze the tiers under 1, keeping their order
        notes.append(f"duplicate lowered from {dup:.3f} to 1.0 (the highest cosine); near and similar below it")
        dup = 1.0
        near_t = min(near_t, dup - MIN_GAP)
        similar = min(similar, near_t - MIN_GAP)
    values = [round(v, 3) for v in (dup, near_t, similar)]
    return dict(zip(TIER_NAMES, values, strict=True)), notes


def _percentiles(values: np.ndarray) -> dict[str, float]:
    return {f"p{p:g}": round(float(np.percentile(values, p)), 4) for p in PERCENTILES} if values.size else {}


def calibrate_tiers(
    embed: Embed, images: list[Image.Image], seed: int = 0, *, source: str = "images"
) -> tuple[dict[str, float], dict[str, Any]]:
    """Measure a model's tiers on ``images`` (no labels needed); ``(tiers, calibration)`` for the model file.

    ``embed`` maps PIL images to the served, L2-normalised vectors ``[N, D]``. One duplicate copy and
    one near copy are made of every distinct image (seeded by ``seed`` and the image's position), so
    the model embeds three images per original. ``source`` names the images in ``calibration``.
    """
    kept = distinct_images(images)
    if len(kept) < MIN_IMAGES:
        raise ValueError(
            f"calibrating tiers needs at least {MIN_IMAGES} distinct images, got {len(kept)} of {len(images)}"
        )
    originals = [to_rgb(images[i]) for i in kept]
    dups = [duplicate_copy(im, np.random.default_rng([seed, i, 0])) for i, im in zip(kept, originals, strict=True)]
    nears = [near_copy(im, np.random.default_rng([seed, i, 1])) for i, im in zip(kept, originals, strict=True)]
    vectors = np.asarray(embed(originals + dups + nears), dtype=np.float64)
    n = len(originals)
    o, d, e = vectors[:n], vectors[n : 2 * n], vectors[2 * n :]
    dup_sims, near_sims = (o * d).sum(1), (o * e).sum(1)
    unrelated = (o @ o.T)[np.triu_indices(n, 1)]
    tiers, notes = choose_tiers(dup_sims, near_sims, unrelated)
    calibration = {
        "method": METHOD,
        "source": source,
        "images": n,
        "dropped_as_copies": len(images) - n,
        "seed": seed,
        "copies": COPIES,
        "rules": RULES,
        "pairs": {"duplicate": n, "near": n, "unrelated": int(unrelated.size)},
        "percentiles": {
            "duplicate": _percentiles(dup_sims),
            "near": _percentiles(near_sims),
            "unrelated": _percentiles(unrelated),
        },
        "rates": {  # fractions of each kind of pair at or above the tiers chosen, on the calibration images
            "duplicate_copies_duplicate": round(float(np.mean(dup_sims >= tiers["duplicate"])), 4),
            "near_copies_duplicate": round(float(np.mean(near_sims >= tiers["duplicate"])), 4),
            "near_copies_near": round(float(np.mean(near_sims >= tiers["near"])), 4),
            "unrelated_near": round(float(np.mean(unrelated >= tiers["near"])), 5),
            "unrelated_similar": round(float(np.mean(unrelated >= tiers["similar"])), 5),
        },
        "clamped": notes,
    }
    return tiers, calibration


def module_embed(
    module: Any, meta: EmbedderMeta, *, device: str = "cpu", batch_size: int | None = None, freeze: bool = True
) -> Embed:
    """``embed`` for :func:`calibrate_tiers` from a loaded model: the server's preprocessing and output vectors.

    On CPU the TorchScript graph is frozen (batch norm folded) and fed batches of 8: about twice the
    throughput of the module as loaded at batch 64 on 2 cores, which is what keeps calibrating the default
    model at its conversion within a few seconds. A graph that does not freeze runs as it is. On a GPU
    (``device="cuda"``, the module already there) batches are 64 and the graph is left as it is.
    """
    import torch

    from lookalike.modelfile import quiet_torchscript

    module = module.eval()
    on_cpu = torch.device(device).type == "cpu"
    batch_size = batch_size or (8 if on_cpu else 64)
    if meta.precision == "fp16" and on_cpu:
        module = module.float()  # half kernels are slow or missing on CPU; the module casts inside
    if freeze and on_cpu:
        try:
            with quiet_torchscript():
                module = torch.jit.freeze(module)
        except Exception:  # freezing refuses some scripted modules (e.g. training-only attributes)
            pass

    def embed(images: list[Image.Image]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = np.stack([preprocess(im, meta) for im in images[start : start + batch_size]])
                out.append(module(torch.from_numpy(batch).to(device)).float().cpu().numpy())  # [B, D]
        return output_vectors(np.concatenate(out), meta)

    return embed


def calibrate_model_file(
    path: str | Path,
    images: list[Image.Image] | None = None,
    *,
    seed: int = 0,
    source: str | None = None,
    device: str = "cpu",
) -> EmbedderMeta:
    """Measure and store tiers in a model file, in place; ``images=None``: the built-in synthetic set.

    The weights are untouched; the tiers are measured on the vectors the server would serve (the
    file's domain centre applied), so calibrate after any ``with_center``.
    """
    from lookalike.trainer import calibration_images as builtin

    from lookalike.modelfile import load_embedder, with_tiers

    module, meta = load_embedder(path, device=device)
    if images is None:
        images, source = builtin.calibration_images(), builtin.SOURCE
    embed = module_embed(module, meta, device=device)
    tiers, calibration = calibrate_tiers(embed, images, seed, source=source or "images")
    return with_tiers(path, tiers, calibration)


def _pair_relations(labels: np.ndarray | None, owner: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """``[M, M]`` rank of each pair's true relation (3 duplicate, 2 near, 1 similar, 0 unrelated)."""
    same_owner = owner[:, None] == owner[None, :]
    copy_pair = same_owner & ((kind[:, None] == 2) | (kind[None, :] == 2))  # a near copy with its original or twin
    rank = np.where(same_owner, np.where(copy_pair, 2, 3), 0)
    if labels is not None:
        rank = np.where(~same_owner & (labels[owner][:, None] == labels[owner][None, :]), 1, rank)
    return rank


def tier_report(
    embed: Embed,
    tiers: Mapping[str, float],
    labelled: Mapping[str, tuple[Sequence[Image.Image], np.ndarray]] | None = None,
    near_dup: Mapping[str, Sequence[Image.Image]] | None = None,
    *,
    copies: int | None = None,
    seed: int = 1,
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Precision and recall of each tier on labelled sets and on copies of unlabelled images.

    For every pair of different images (by index) the true relation is: duplicate (an original and its
    duplicate copy), near (a near copy with its original or duplicate copy), similar (different images
    of one label) or unrelated (different images otherwise; for ``near_dup`` sets, any two different
    originals). Per tier, **precision** is the fraction of pairs at or above its threshold whose relation
    is that one or closer; **recall** the fraction of pairs of exactly that relation at or above it
    (``None`` where there are no such pairs); ``above_by_relation`` counts the pairs at or above it by
    their true relation (what the false positives are). ``labelled`` sets also get copies of their first ``copies``
    images (default: all) so that one set scores all three tiers; ``near_dup`` sets have no labels.
    ``seed`` should differ from the calibration's, so the copies are not the ones it saw.
    """
    report: dict[str, dict[str, dict[str, float | int | None]]] = {}
    jobs: list[tuple[str, Sequence[Image.Image], np.ndarray | None]] = []
    for name, (images, labels) in (labelled or {}).items():
        jobs.append((name, images, np.asarray(labels)))
    for name, images in (near_dup or {}).items():
        jobs.append((name, images, None))
    thresholds = [float(tiers[t]) for t in TIER_NAMES]
    for name, images, labels in jobs:
        n = len(images)
        m = n if copies is None else min(copies, n)
        originals = [to_rgb(im) for im in images]
        dups = [duplicate_copy(originals[i], np.random.default_rng([seed, i, 0])) for i in range(m)]
        nears = [near_copy(originals[i], np.random.default_rng([seed, i, 1])) for i in range(m)]
        vectors = np.asarray(embed(originals + dups + nears), dtype=np.float32)
        owner = np.concatenate([np.arange(n), np.arange(m), np.arange(m)])
        kind = np.concatenate([np.zeros(n), np.ones(m), np.full(m, 2)]).astype(np.int64)
        rank = _pair_relations(labels, owner, kind)
        sims = vectors @ vectors.T
        upper = np.triu(np.ones_like(sims, dtype=bool), 1)
        s, r = sims[upper], rank[upper]
        report[name] = {}
        for tier, threshold in zip(TIER_NAMES, thresholds, strict=True):
            want = _RELATION_RANK[tier]
            above = s >= threshold
            true = r == want
            report[name][tier] = {
                "threshold": threshold,
                "precision": round(float((r[above] >= want).mean()), 4) if above.any() else None,
                "recall": round(float(above[true].mean()), 4) if true.any() else None,
                "above": int(above.sum()),
                "true": int(true.sum()),
                "above_by_relation": {rel: int((r[above] == k).sum()) for rel, k in _RELATION_RANK.items()},
            }
    return report
