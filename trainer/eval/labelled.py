"""Labelled image sets: a folder with one subfolder per class, or Fashion-MNIST."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lookalike.trainer.data.images import UnreadableImage, load_image
from lookalike.trainer.data.skips import SkipLog
from lookalike.trainer.data.sources import list_folder
from PIL import Image


@dataclass
class LabelledImages:
    """Images (decoded, RGB or L) with integer labels and the class names they index."""

    images: list[Image.Image]
    labels: np.ndarray  # [N] int64
    classes: list[str]
    skipped: SkipLog

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledImages:
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledImages([self.images[i] for i in idx], self.labels[idx], self.classes, self.skipped)


def load_labelled_folder(folder: str | Path, classes: list[str] | None = None) -> LabelledImages:
    """Every image under ``folder/<class>/`` (recursive); unreadable ones are skipped and counted.

    ``classes`` fixes the label order (so a query folder uses its gallery's labels); a class
    missing from it raises ``ValueError``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{folder} is not a folder; pass a folder with one subfolder per class")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not found:
        raise ValueError(f"{folder} has no class subfolders; put each class's images in folder/<class>/")
    names = list(classes) if classes is not None else found
    extra = sorted(set(found) - set(names))
    if extra:
        raise ValueError(f"{folder} has classes {extra} that the gallery does not have")
    images, labels, skipped = [], [], SkipLog()
    for name in found:
        for ref in list_folder(root / name):
            try:
                images.append(load_image(ref))
            except UnreadableImage as exc:
                skipped.add(exc.ref, exc.reason)
                continue
            labels.append(names.index(name))
    if not images:
        raise ValueError(f"no readable images under {folder}")
    return LabelledImages(images, np.asarray(labels, dtype=np.int64), names, skipped)


def arrays_to_labelled(pixels: np.ndarray, labels: np.ndarray, classes: list[str]) -> LabelledImages:
    """``[N, H, W]`` uint8 grayscale arrays -> ``LabelledImages`` of mode ``L`` PIL images."""
    images = [Image.fromarray(a) for a in pixels]  # uint8 [H, W] -> mode L
    return LabelledImages(images, labels.astype(np.int64), classes, SkipLog())
