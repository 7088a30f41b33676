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

A third set is of another kind of artwork: ``icons-tabler``, the outline icons of Tabler Icons
(npm ``@tabler/icons-png`` for the 240 px PNGs and ``@tabler/icons`` for ``icons.json``, which gives
each icon's category; MIT), labelled by category (``Animals``, ``Food``, ``Vehicles``, ``Weather``,
...): black line drawings, no colour, no texture: further from ImageNet's photos than the emoji::

    npm install --prefix ~/.cache/lookalike/datasets @tabler/icons@3.48.0 @tabler/icons-png@3.48.0

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
DOMAINS = ("emoji-google", "emoji-twitter", "emoji-cross", "icons-tabler")
TABLER_INSTALL_HINT = (
    "npm install --prefix ~/.cache/lookalike/datasets @tabler/icons@3.48.0 @tabler/icons-png@3.48.0 "
    "(or set LOOKALIKE_DATASETS_DIR to the --prefix used)"
)
# Categories that name a visual kind of thing (not "System", "Design", "Brand" logos, "Letters", ...).
TABLER_CATEGORIES = (
    "Animals", "Buildings", "Charts", "Computers", "Currencies", "Database", "Devices", "E-commerce",
    "Electrical", "Food", "Games", "Gender", "Gestures", "Health", "Laundry", "Map", "Media", "Mood",
    "Nature", "Photography", "Shapes", "Sport", "Vehicles", "Weather", "Zodiac",
)  # fmt: skip


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


def tabler_package_dirs(root: Path | None = None) -> tuple[Path, Path]:
    """``(@tabler/icons, @tabler/icons-png)`` under ``root`` (default :func:`datasets_dir`), else ``./``."""
    candidates = [(root or datasets_dir()) / "node_modules", Path("node_modules")]
    for base in candidates:
        meta, png = base / "@tabler" / "icons", base / "@tabler" / "icons-png"
        if (meta / "icons.json").is_file() and (png / "icons" / "outline").is_dir():
            return meta, png
    raise ValueError(
        f"@tabler/icons and @tabler/icons-png are not installed (looked in {[str(c) for c in candidates]}); "
        f"run: {TABLER_INSTALL_HINT}"
    )


def tabler_selection(root: Path | None = None) -> list[tuple[str, str]]:
    """``[(icon name, category)]``: outline icons of :data:`TABLER_CATEGORIES`, at most 24 a kind.

    ``-off`` (struck-through) variants are left out (near-copies of their icon); a kind with more
    icons than the cap keeps names spread evenly over its alphabetical list, not the first ones
    (which would be variants of one icon: ``arrow-...``).
    """
    meta, png = tabler_package_dirs(root)
    icons = json.loads((meta / "icons.json").read_text(encoding="utf-8"))
    by_class: dict[str, list[str]] = {}
    for name, entry in icons.items():
        category = entry.get("category")
        if category not in TABLER_CATEGORIES or name.endswith("-off") or "outline" not in entry.get("styles", {}):
            continue
        if (png / "icons" / "outline" / f"{name}.png").is_file():
            by_class.setdefault(category, []).append(name)
    chosen = []
    for category in sorted(by_class):
        names = sorted(by_class[category])
        if len(names) < MIN_PER_CLASS:
            continue
        picks = np.linspace(0, len(names) - 1, min(MAX_PER_CLASS, len(names))).round().astype(int)
        chosen.extend((names[i], category) for i in picks)
    return chosen


def load_tabler(root: Path | None = None) -> DomainSet:
    """Tabler's outline icons of :func:`tabler_selection`, on white, labelled by category."""
    _, png = tabler_package_dirs(root)
    selection = tabler_selection(root)
    classes = sorted({c for _, c in selection})
    images, labels, refs = [], [], []
    for name, category in selection:
        path = png / "icons" / "outline" / f"{name}.png"
        with Image.open(path) as img:
            images.append(on_white(img))
        labels.append(classes.index(category))
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
    if name == "icons-tabler":
        return load_tabler(root), None
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
