"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, gzip), no download.

70,000 28x28 grayscale product photos in 10 classes: 60,000 train, 10,000 test
(https://github.com/zalandoresearch/fashion-mnist). Install with
``apt-get install dataset-fashion-mnist``; the files land in ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from lookalike.trainer.eval.labelled import LabelledImages, arrays_to_labelled

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if int.from_bytes(data[:4], "big") != magic:
        raise ValueError(f"{path} is not an IDX file with magic {magic:#x}")
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_arrays(split: str, folder: Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 28, 28] uint8, labels [N] uint8)`` of ``split`` (train or test)."""
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(_FILES)}, got {split!r}")
    paths = []
    for name in _FILES[split]:
        path = folder / name
        if not path.is_file() and path.with_suffix("").is_file():
            path = path.with_suffix("")
        if not path.is_file():
            raise ValueError(
                f"{folder / name} not found; install the Debian package dataset-fashion-mnist "
                "(apt-get install dataset-fashion-mnist) or pass --fashion-mnist-dir"
            )
        paths.append(path)
    return _read_idx(paths[0], 0x803), _read_idx(paths[1], 0x801)


def load_split(split: str, folder: Path = DEFAULT_DIR, limit: int | None = None) -> LabelledImages:
    """The first ``limit`` images of a split (the files are in random class order)."""
    pixels, labels = load_arrays(split, folder)
    if limit is not None:
        pixels, labels = pixels[:limit], labels[:limit]
    return arrays_to_labelled(pixels, labels, CLASSES)
