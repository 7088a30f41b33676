"""Folders of real photos for trainer tests: random crops and resizes of the scikit-image photos."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from photos import PHOTO_NAMES, photo
from PIL import Image


@cache
def _photo(name: str) -> np.ndarray:
    return photo(name)


def random_view(name: str, rng: np.random.Generator, max_side: tuple[int, int] = (40, 160)) -> Image.Image:
    """A random crop (40-100% of each side) of photo ``name``, resized so its longer side is in ``max_side``."""
    arr = _photo(name)
    h, w = arr.shape[:2]
    ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = Image.fromarray(arr[top : top + ch, left : left + cw])
    side = int(rng.integers(max_side[0], max_side[1] + 1))
    scale = side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)


def write_image_folder(
    folder: Path,
    n: int,
    *,
    seed: int = 0,
    labelled: bool = False,
    classes: tuple[str, ...] = PHOTO_NAMES,
    max_side: tuple[int, int] = (40, 160),
) -> list[Path]:
    """``n`` JPEGs cycling over ``classes``; in ``folder/<class>/`` when ``labelled``. Returns the paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        name = classes[i % len(classes)]
        sub = folder / name if labelled else folder
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{name}_{i:04d}.jpg"
        random_view(name, rng, max_side).save(path, quality=90)
        paths.append(path)
    return paths
