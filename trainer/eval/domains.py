"""Labelled image sets with a real domain shift from ImageNet, installed offline from a registry.

Fashion-MNIST (Debian ``dataset-fashion-mnist``) is one; the others here are the emoji artwork of
two vendors from npm (``emoji-datasource-google``: Noto Emoji, Apache-2.0; ``emoji-datasource-twitter``:
Twemoji, CC-BY 4.0), labelled by their Unicode subcategory (``animal-mammal``, ``food-fruit``,
``transport-air``, ...): drawn objects on a plain background, many kinds, few images per kind, the
situation where a fine-tune on a few hundred unlabeled images must not make retrieval worse.

Install once (no network at run time afterwards)::

    npm install --prefix ~/.cache/lookalike/datasets emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0

Sets (``load_domain(name)``):

- ``emoji-google``: Noto Emoji, 64 px, object/nature/food/travel/activity subcategories, <= 24 per kind.
- ``emoji-twitter``: the same emoji and labels drawn by Twemoji.
- ``emoji-cross``: gallery ``emoji-google``, queries ``emoji-twitter`` (same kinds): a style shift
  between gallery and query, as between a catalogue and user photos.

Each image is composited onto white (the PNGs are transparent; a plain ``convert("RGB")`` would
show the undefined colour under the alpha channel) and returned as an RGB PIL image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DATASETS_ENV = "LOOKALIKE_DATASETS_DIR"
DEFAULT_DIR = Path.home() / ".cache" / "lookalike" / "datasets"
INSTALL_HINT = (
    "npm install --prefix ~/.cache/lookalike/datasets emoji-datasource-google@16.0.0 "
    "emoji-datasource-twitter@16.0.0 (or set LOOKALIKE_DATASETS_DIR to the --prefix used)"
)
VENDORS = ("google", "twitter")
# Subcategories of things (not people, faces, flags or symbols): visual kinds, as in a catalogue.
EMOJI_CATEGORIES = ("Animals & Nature", "Food & Drink", "Travel & Places", "Activities", "Objects")
MIN_PER_CLASS = 12
MAX_PER_CLASS = 24
DOMAINS = ("emoji-google", "emoji-twitter", "emoji-cross")


@dataclass
class DomainSet:
    """Decoded RGB images with integer labels indexing ``classes``; ``refs`` name the source files."""

    images: list[Image.Image]
    labels: np.ndarray  # [N] int64
    classes: list[str]
    refs: list[str]

    def __len__(self) -> int:
        return len(self.images)


def datasets_dir() -> Path:
    return Path(os.environ.get(DATASETS_ENV) or DEFAULT_DIR)


def emoji_package_dir(vendor: str, root: Path | None = None) -> Path:
    """``node_modules/emoji-datasource-<vendor>`` under ``root`` (default :func:`datasets_dir`), else ``./``."""
    if vendor not in VENDORS:
        raise ValueError(f"emoji vendor must be one of {list(VENDORS)}, got {vendor!r}")
    candidates = [(root or datasets_dir()) / "node_modules", Path("node_modules")]
    for base in candidates:
        pkg = base / f"emoji-datasource-{vendor}"
        if (pkg / "emoji.json").is_file() and (pkg / "img" / vendor / "64").is_dir():
            return pkg
    raise ValueError(
        f"emoji-datasource-{vendor} is not installed (looked in {[str(c) for c in candidates]}); run: {INSTALL_HINT}"
    )


def emoji_selection(root: Path | None = None) -> list[tuple[str, str]]:
    """``[(image file name, subcategory)]``: emoji every vendor draws, in the chosen kinds, capped per kind.

    The same list for every vendor, so ``emoji-google`` and ``emoji-twitter`` hold the same emoji.
    """
    entries = json.loads((emoji_package_dir(VENDORS[0], root) / "emoji.json").read_text(encoding="utf-8"))
    by_class: dict[str, list[tuple[int, str]]] = {}
    for e in entries:
        if e.get("category") not in EMOJI_CATEGORIES or not all(e.get(f"has_img_{v}") for v in VENDORS):
            continue
        by_class.setdefault(e["subcategory"], []).append((int(e["sort_order"]), e["image"]))
    chosen = []
    for sub in sorted(by_class):
        items = sorted(by_class[sub])
        if len(items) >= MIN_PER_CLASS:
            chosen.extend((image, sub) for _, image in items[:MAX_PER_CLASS])
    return chosen


def on_white(image: Image.Image) -> Image.Image:
    """RGB image with any transparency composited onto white."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def load_emoji(vendor: str, root: Path | None = None) -> DomainSet:
    """One vendor's emoji of :func:`emoji_selection`, labelled by subcategory."""
    pkg = emoji_package_dir(vendor, root)
    selection = emoji_selection(root)
    classes = sorted({sub for _, sub in selection})
    images, labels, refs = [], [], []
    for name, sub in selection:
        path = pkg / "img" / vendor / "64" / name
        with Image.open(path) as img:
            images.append(on_white(img))
        labels.append(classes.index(sub))
        refs.append(str(path))
    return DomainSet(images, np.asarray(labels, dtype=np.int64), classes, refs)


def load_domain(name: str, root: Path | None = None) -> tuple[DomainSet, DomainSet | None]:
    """``(gallery, query)`` of a named set; ``query`` is None for leave-one-out on the gallery."""
    if name == "emoji-google":
        return load_emoji("google", root), None
    if name == "emoji-twitter":
        return load_emoji("twitter", root), None
    if name == "emoji-cross":
        return load_emoji("google", root), load_emoji("twitter", root)
    raise ValueError(f"unknown domain set {name!r}; choose one of {list(DOMAINS)}")


def write_domain_folder(name: str, dest: str | Path, root: Path | None = None, *, labelled: bool = True) -> Path:
    """Write a set's images as PNGs: ``dest/<class>/<file>`` when ``labelled``, else flat (training input).

    For ``emoji-cross`` the gallery and the queries go to ``dest/gallery`` and ``dest/query``.
    """
    out = Path(dest)
    gallery, query = load_domain(name, root)
    parts = [(out, gallery)] if query is None else [(out / "gallery", gallery), (out / "query", query)]
    for folder, data in parts:
        for image, label, ref in zip(data.images, data.labels, data.refs, strict=True):
            sub = folder / data.classes[int(label)] if labelled else folder
            sub.mkdir(parents=True, exist_ok=True)
            stem = Path(ref).stem
            target = sub / (f"{stem}.png" if labelled else f"{data.classes[int(label)]}__{stem}.png".replace(" ", "_"))
            image.save(target)
    return out
