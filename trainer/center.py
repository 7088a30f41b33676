"""Domain centre: the mean of an export's vectors over the user's own images, stored in the export.

Why: an ImageNet encoder gives every image of one domain (emoji art, outline icons, product shots
on white) a large shared component, so unrelated images of the domain look alike and the vectors
differ mostly in what remains. Subtracting the domain's mean vector (then normalising again)
compares images by that remainder. Measured on the labelled domain sets (trainer/CONFIG.md, "Fourth
pass"): +1.1 mAP on both emoji sets and +0.35 on icons for the default model, about as much again on
top of a fine-tune; a mean over 16 images gave nearly all of it. It needs no labels and no
training, and the server applies it outside the model's graph (``lookalike.modelfile.output_vectors``),
so reduced-precision execution never rounds it.

The images are drawn from the training part (never the self-check's held-out slice), seeded, and
reloaded for each export (decoded images are not kept in memory between checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lookalike.trainer.data.sources import ImageSource, load_readable

from lookalike.modelfile import with_center


@dataclass
class CenterSet:
    """Which training images an export's centre is the mean over."""

    source: ImageSource
    indices: list[int]

    @classmethod
    def draw(cls, source: ImageSource, count: int, seed: int) -> CenterSet | None:
        """Up to ``count`` images of ``source``, seeded; ``None`` when ``count`` is 0 or the source is empty."""
        if count <= 0 or len(source) == 0:
            return None
        rng = np.random.default_rng(seed + 7919)  # another stream than the held-out slice's
        picked = rng.choice(len(source), size=min(count, len(source)), replace=False)
        return cls(source, sorted(int(i) for i in picked))

    def images(self) -> list:
        return load_readable(self.source, self.indices)


def domain_center(model_file: str | Path, images: list, batch_size: int = 64) -> np.ndarray:
    """Mean of the file's L2-normalised vectors of ``images``, through the served preprocessing."""
    from lookalike.trainer.eval.embedders import ModelFileEmbedder

    embedder = ModelFileEmbedder(model_file, batch_size=batch_size, threads=2)
    if embedder.meta.center is not None:
        raise ValueError(f"{model_file} already has a domain centre; a centre is computed on the plain vectors")
    if not images:
        raise ValueError("a domain centre needs at least one readable image")
    return embedder.embed(images).astype(np.float64).mean(axis=0)


def center_export(model_file: str | Path, centre: CenterSet) -> int:
    """Store the domain centre of ``centre``'s images in ``model_file``; returns how many images it averages.

    With fewer than two readable images the file is left as it is (0): a mean of one image is that image.
    """
    images = centre.images()
    if len(images) < 2:
        return 0
    with_center(model_file, domain_center(model_file, images))  # a fresh export: plain, as domain_center needs
    return len(images)
