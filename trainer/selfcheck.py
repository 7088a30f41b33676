"""Self-check on unlabeled images: does the fine-tune retrieve better than the model it started from?

A user brings no labels, so the check needs none. A slice of the images is held out of training;
each held-out image gets a few copies altered the way real duplicates are (a crop, a rescale, a
JPEG re-encode, a colour shift). The model under test embeds the originals and the copies through
the served preprocessing (the export file itself), and the check measures:

- ``recall@1``: fraction of originals whose nearest copy is one of their own;
- ``mAP``: mean average precision of each original's ranking of all copies (its own are relevant),
  finer than recall@1 when that saturates;
- ``alignment``: mean squared distance between an original and its copies (lower is better) and
  ``uniformity``: log of the mean Gaussian potential ``exp(-2 |x - y|^2)`` between originals
  (lower: spread over the sphere), after Wang & Isola, https://arxiv.org/abs/2005.10242.

The score is Wang & Isola's combined objective, negated so that higher is better:
``-(alignment + uniformity)``: copies close to their original, originals spread over the sphere.
Chosen by measurement on the labelled domain sets (trainer/CONFIG.md, "Third pass"): over 12
fine-tunes it moved with labelled kind-level mAP from the start to the last checkpoint in 11 (the
miss: +0.23 mAP, inside a reseed's noise), where the copies' mAP, the score before it, did in 8: a
fine-tune that groups images of a kind draws copies of *other* images of that kind up the ranking,
so the copies' mAP fell while retrieval by kind improved. A score that rewards spread alone would
prefer a broken model that scatters every image (random features are as spread as it gets), so a
checkpoint counts only if it still finds the copies: its ``recall@1`` is not clearly below the
start's (``guard``). The copies use other transforms than training's crops (rescale, JPEG) and one
``combo`` copy stacks them all (a tight crop, a colour shift, a rescale and a JPEG re-encode); the
held-out images are never trained on.

Which model ``best_export.pt`` is: the **latest** check, when it passes the guard and its score is
clearly above the start's (more than ``tolerance_se`` standard errors of the paired difference,
estimated by the jackknife over held-out images); otherwise, among checks that pass the guard, the
latest whose score is within noise of the best score and clearly above the start's; if none is,
the start. The score is used for what it was shown to do: over 15 labelled fine-tunes it moved with
kind-level mAP from the start to the last checkpoint in 14, but it does not rank the checkpoints of
one run (it prefers the early, most spread ones: its top was at or above the last checkpoint's
labelled mAP in 8 of 15, the last-if-clearly-above-the-start rule in 12 of 15, never below the
start; trainer/CONFIG.md, "Fourth pass"). One that only ties the start is not served (a 5x learning
rate on Twemoji tied the start's score at -1.15 labelled mAP).

"Within noise" is a difference of at most ``max(tolerance_se x paired SE, min_gain)``: the jackknife
measures how much the choice of held-out images moves a difference, not whether a difference is big
enough to mean anything. A model two steps away from its start moves every image's score by about the
same hair (+0.002 with a far smaller SE, reported as a gain by the SE alone); ``min_gain``
(:data:`MIN_GAIN`) makes that a tie, and the start is served.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

START_EXPORT = "start_export.pt"
BEST_EXPORT = "best_export.pt"
LOG = "selfcheck.jsonl"
TRANSFORMS = ("crop", "rescale", "jpeg", "colour", "combo")
# Score differences up to this are ties (selfcheck.min_gain). Twice the +0.005 tie of the 5x-lr Twemoji
# run (trainer/CONFIG.md), and a fraction of the moves of fine-tunes that changed labelled mAP (0.05-0.3).
MIN_GAIN = 0.01


@dataclass
class CheckSet:
    """Held-out originals, their altered copies, and which original each copy comes from."""

    originals: list[Image.Image]
    copies: list[Image.Image]
    owner: np.ndarray  # [C] int64: index into originals


def holdout_indices(n: int, fraction: float, min_images: int, max_images: int, seed: int) -> np.ndarray:
    """Sorted indices of the held-out images: ``fraction`` of ``n`` within [min, max], never over half."""
    if fraction <= 0 or n < 4:
        return np.zeros(0, dtype=np.int64)
    count = min(max(round(n * fraction), min_images), max_images, n // 2)
    rng = np.random.default_rng(seed + 7919)
    return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)


def _crop(image: Image.Image, rng: np.random.Generator, area: tuple[float, float] = (0.4, 0.8)) -> Image.Image:
    w, h = image.size
    frac = rng.uniform(*area)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = max(1, min(w, round(w * np.sqrt(frac * aspect))))
    ch = max(1, min(h, round(h * np.sqrt(frac / aspect))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((left, top, left + cw, top + ch))


def _rescale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    s = rng.uniform(0.3, 0.6)
    w, h = image.size
    small = image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    return small.resize((w, h), Image.BILINEAR)


def _jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=int(rng.integers(15, 40)))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _colour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.6, 1.4))
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.3, 1.7))
    return out


def altered_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """A crop of ``image`` followed by ``kind`` (``crop`` alone is a tighter crop; ``combo``: all at once)."""
    image = image.convert("RGB")
    if kind == "crop":
        return _crop(image, rng, (0.25, 0.5))
    if kind == "combo":
        out = _colour(_crop(image, rng, (0.25, 0.6)), rng)
        return _jpeg(_rescale(out, rng), rng)
    base = _crop(image, rng)
    return {"rescale": _rescale, "jpeg": _jpeg, "colour": _colour}[kind](base, rng)


def make_check_set(images: list[Image.Image], views: int, seed: int = 0) -> CheckSet:
    """``views`` altered copies per image, cycling through :data:`TRANSFORMS`; deterministic per seed."""
    rng = np.random.default_rng(seed)
    copies, owner = [], []
    for i, image in enumerate(images):
        for v in range(views):
            copies.append(altered_copy(image, TRANSFORMS[v % len(TRANSFORMS)], rng))
            owner.append(i)
    return CheckSet([im.convert("RGB") for im in images], copies, np.asarray(owner, dtype=np.int64))


def check_metrics(originals: np.ndarray, copies: np.ndarray, owner: np.ndarray) -> dict[str, Any]:
    """Self-check numbers for L2-normalised embeddings ``originals`` [N, D] and ``copies`` [C, D].

    Besides the totals: per original, its copies' AP (``ap``), whether its nearest copy is its own
    (``hit``) and the score with it and its copies left out (``jackknife``), so that two checks of
    the same held-out images can be compared with a paired standard error.
    """
    o = np.asarray(originals, dtype=np.float64)
    c = np.asarray(copies, dtype=np.float64)
    owner = np.asarray(owner, dtype=np.int64)
    n = o.shape[0]
    sims = o @ c.T  # [N, C]
    relevant = owner[None, :] == np.arange(n)[:, None]  # [N, C]
    order = np.argsort(-sims, axis=1, kind="stable")  # [N, C]
    rel_sorted = np.take_along_axis(relevant, order, axis=1).astype(np.float64)  # [N, C]
    hit = rel_sorted[:, 0]  # [N]
    precision = np.cumsum(rel_sorted, axis=1) / np.arange(1, c.shape[0] + 1)  # [N, C]
    ap = (precision * rel_sorted).sum(1) / np.maximum(rel_sorted.sum(1), 1)  # [N]
    sq = ((o[owner] - c) ** 2).sum(1)  # [C] squared distance of each copy to its original
    alignment = float(sq.mean())
    d2 = np.maximum(2.0 - 2.0 * (o @ o.T), 0.0)  # [N, N] squared distances of unit vectors
    pot = np.exp(-2.0 * d2)
    np.fill_diagonal(pot, 0.0)
    pairs = n * (n - 1) / 2
    uniformity = float(np.log(pot.sum() / 2 / pairs)) if n > 1 else 0.0
    score = -(alignment + uniformity)
    jackknife = np.full(n, score)
    if n > 2:  # leave original i and its copies out
        own_sq = np.bincount(owner, weights=sq, minlength=n)
        own_count = np.bincount(owner, minlength=n)
        align_loo = (sq.sum() - own_sq) / np.maximum(len(sq) - own_count, 1)
        unif_loo = np.log((pot.sum() / 2 - pot.sum(1)) / ((n - 1) * (n - 2) / 2))
        jackknife = -(align_loo + unif_loo)
    return {
        "recall@1": float(hit.mean()), "mAP": float(ap.mean()), "alignment": alignment,
        "uniformity": uniformity, "score": score,
        "ap": [round(float(a), 6) for a in ap],
        "hit": [int(h) for h in hit],
        "jackknife": [round(float(j), 6) for j in jackknife],
    }  # fmt: skip


def paired_jackknife_se(a: list[float], b: list[float]) -> float:
    """Standard error of ``score(a) - score(b)`` from the two checks' leave-one-out scores (same images)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    return float(np.sqrt((n - 1) / n * ((d - d.mean()) ** 2).sum())) if n > 1 else 0.0


def noise_band(entry: dict[str, Any], other: dict[str, Any], tolerance_se: float, min_gain: float = 0.0) -> float:
    """How far apart two checks' scores may be and still tie: ``max(tolerance x paired SE, min_gain)``.

    Entries without leave-one-out scores (logs of older versions) have no SE: ``min_gain`` alone.
    """
    a, b = entry.get("jackknife"), other.get("jackknife")
    if entry is other or not a or not b or len(a) != len(b):
        return min_gain
    return max(tolerance_se * paired_jackknife_se(a, b), min_gain)


def within_noise(entry: dict[str, Any], top: dict[str, Any], tolerance_se: float, min_gain: float = 0.0) -> bool:
    """``entry``'s score is not clearly below ``top``'s: the difference >= -:func:`noise_band`."""
    if entry is top:
        return True
    return entry["score"] - top["score"] >= -noise_band(entry, top, tolerance_se, min_gain)


def keeps_copies(entry: dict[str, Any], start: dict[str, Any] | None, tolerance_se: float) -> bool:
    """The guard: ``entry`` finds held-out images' own copies first about as often as the start does.

    Per image, a hit is 1 when its nearest copy is its own; the mean paired difference to the start
    must be >= -tolerance x its standard error (one image lost among a few dozen is noise, two are not).
    """
    if start is None or entry is start:
        return True
    a, b = entry.get("hit"), start.get("hit")
    if not a or not b or len(a) != len(b):  # logs of older versions: one image's worth of slack
        n = len(entry.get("ap") or [])
        return entry["recall@1"] >= start["recall@1"] - (1 / n if n else 0.0) - 1e-9
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()) >= -tolerance_se * se - 1e-9  # one lost of n: mean -1/n, se 1/n


def run_check(model_file: str | Path, check: CheckSet, batch_size: int = 64) -> dict[str, Any]:
    """Embed ``check`` with a model file, as the server would but without its domain centre; :func:`check_metrics`.

    Plain vectors: the score was validated on them (trainer/CONFIG.md, "Third pass"). On centred vectors
    it missed the fine-tune's gain on Noto (every checkpoint scored 0.03-0.08 below the centred start,
    "Fourth pass"); the centre is added to whichever export is served, the start included.
    """
    from lookalike.trainer.eval.embedders import ModelFileEmbedder

    embedder = ModelFileEmbedder(model_file, batch_size=batch_size, threads=2, plain=True)
    return check_metrics(embedder.embed(check.originals), embedder.embed(check.copies), check.owner)


@dataclass
class SelfCheckLog:
    """The start's and every checkpoint's self-check, kept in ``selfcheck.jsonl``; tracks the best."""

    out: Path
    entries: list[dict[str, Any]] = field(default_factory=list)
    tolerance_se: float = 1.0  # how many paired standard errors below the top score still count as a tie
    min_gain: float = MIN_GAIN  # score differences up to this are ties whatever the standard error

    @classmethod
    def load(cls, out: Path, tolerance_se: float = 1.0, min_gain: float = MIN_GAIN) -> SelfCheckLog:
        path = out / LOG
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        return cls(out, entries, tolerance_se, min_gain)

    def _ties(self, entry: dict[str, Any], top: dict[str, Any]) -> bool:
        return within_noise(entry, top, self.tolerance_se, self.min_gain)

    def noise(self, entry: dict[str, Any]) -> float:
        """The noise band of ``entry``'s difference to the start (0 without a start)."""
        start = self.start
        return 0.0 if start is None else noise_band(entry, start, self.tolerance_se, self.min_gain)

    @property
    def start(self) -> dict[str, Any] | None:
        return next((e for e in self.entries if e["epoch"] == 0), None)

    @property
    def eligible(self) -> list[dict[str, Any]]:
        """Checks that pass the guard (:func:`keeps_copies` against the start); the start always does."""
        start = self.start
        return [e for e in self.entries if keeps_copies(e, start, self.tolerance_se)]

    @property
    def top(self) -> dict[str, Any] | None:
        """The eligible check with the highest score (the earliest of equals)."""
        return max(self.eligible, key=lambda e: (e["score"], -e["epoch"]), default=None)

    def beats_start(self, entry: dict[str, Any]) -> bool:
        """``entry`` keeps its copies and its score is clearly above the start's (not within its noise)."""
        start = self.start
        if entry is start:
            return False
        tol = self.tolerance_se
        return keeps_copies(entry, start, tol) and (start is None or not self._ties(start, entry))

    @property
    def latest_within_noise(self) -> dict[str, Any] | None:
        """The latest check that beats the start and is within noise of :attr:`top`, else the start."""
        top = self.top
        if top is None:
            return None
        return next((e for e in reversed(self.eligible) if self.beats_start(e) and self._ties(e, top)),
                    self.start)  # fmt: skip

    @property
    def best(self) -> dict[str, Any] | None:
        """The model to serve (module docstring): the last check when it beats the start, else
        :attr:`latest_within_noise`."""
        if self.entries and self.beats_start(self.entries[-1]):
            return self.entries[-1]
        return self.latest_within_noise

    def ties_start(self) -> dict[str, Any] | None:
        """The latest checkpoint within noise of the start when the start is served, else ``None``."""
        start = self.start
        if start is None or self.best is not start:
            return None
        return next((e for e in reversed(self.eligible) if e is not start and self._ties(e, start)
                     and self._ties(start, e)), None)  # fmt: skip

    def add(self, epoch: int, step: int, export: Path, metrics: dict[str, Any]) -> bool:
        """Record one check; ``best_export.pt`` follows :attr:`best`. Returns whether ``export`` is now it."""
        previous = self.best
        entry = {"epoch": epoch, "step": step, "export": export.name, **metrics}
        self.entries.append(entry)
        with (self.out / LOG).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        best = self.best
        if best is not previous and best is not None:
            source = export if best is entry else self.out / best["export"]
            tmp = self.out / (BEST_EXPORT + ".tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(self.out / BEST_EXPORT)
        return best is entry

    def verdict(self) -> str:
        """The closing lines: did the fine-tune beat its start on the self-check, and which file to serve."""
        start, best = self.start, self.best
        if start is None or best is None:
            return "self-check: no result (selfcheck.holdout=0 or too few images)"
        last = self.entries[-1]

        def fmt(e: dict[str, Any]) -> str:
            return (
                f"recall@1 {e['recall@1']:.3f} mAP {e['mAP']:.3f} alignment {e['alignment']:.3f} "
                f"uniformity {e['uniformity']:.3f} (score {e['score']:.3f})"
            )

        lines = [f"self-check on held-out images: start {fmt(start)}; last (epoch {last['epoch']}) {fmt(last)}"]
        gain = best["score"] - start["score"]
        tie = self.ties_start()
        if best is start and tie is not None:
            lines.append(
                f"self-check: tie: the fine-tune is within the self-check's noise (±{self.noise(tie):.3f}) of its "
                f"start (epoch {tie['epoch']}: {tie['score'] - start['score']:+.3f} score), so it did NOT clearly beat "
                f"it; serving the start model: {self.out / START_EXPORT} (best_export.pt = start)"
            )
        elif best is start:
            lines.append(
                "self-check: the fine-tune did NOT beat its starting model (every checkpoint clearly below it, "
                f"or finding fewer copies); serve the start: {self.out / START_EXPORT} "
                "(best_export.pt is that same model)"
            )
        else:
            lines.append(
                f"self-check: the fine-tune beats its start by {gain:+.3f} score (noise ±{self.noise(best):.3f}) at "
                f"epoch {best['epoch']} ({fmt(best)}); serve {self.out / BEST_EXPORT}"
            )
        return "\n".join(lines)
