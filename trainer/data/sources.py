"""Where training images come from: an image list file, a folder, or a prep output (shards).

A list holds one image per line, a local path or an ``oss://`` key, absolute or relative to
``root`` (default: the list's own folder), like the PAI demo list ``demo_img_list.txt``. Blank
lines and ``#`` comments are ignored; anything after a tab (a label column) is ignored too, so
labelled lists can be reused without editing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from lookalike.trainer.data.images import UnreadableImage, load_image, read_bytes
from lookalike.trainer.data.oss import OssReader, is_oss
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MANIFEST = "prep.json"


class ImageSource(Protocol):
    """An indexable collection of images; ``load`` raises ``UnreadableImage`` for a bad one."""

    def __len__(self) -> int: ...

    def ref(self, index: int) -> str: ...

    def load(self, index: int) -> Image.Image: ...


def load_readable(source: ImageSource, indices: list[int]) -> list[Image.Image]:
    """The images of ``source`` at ``indices``, unreadable ones skipped (the self-check's and the centre's sets)."""
    images = []
    for i in indices:
        try:
            images.append(source.load(i))
        except UnreadableImage:
            continue
    return images


def join_root(root: str | None, entry: str) -> str:
    if is_oss(entry) or os.path.isabs(entry) or not root:
        return entry
    if is_oss(root):
        return root.rstrip("/") + "/" + entry.lstrip("/")
    return str(Path(root) / entry)


def read_image_list(list_path: str, root: str | None = None, oss: OssReader | None = None) -> list[str]:
    """Image references of a list file (local or ``oss://``), joined with ``root``."""
    if is_oss(list_path):
        text = read_bytes(list_path, oss).decode("utf-8")
        default_root = list_path.rsplit("/", 1)[0]
    else:
        path = Path(list_path)
        if not path.is_file():
            raise ValueError(f"image list {list_path} does not exist; pass a list file, a folder or a prep output")
        text = path.read_text(encoding="utf-8")
        default_root = str(path.parent)
    base = root if root is not None else default_root
    refs = []
    for line in text.splitlines():
        entry = line.split("\t", 1)[0].strip()
        if entry and not entry.startswith("#"):
            refs.append(join_root(base, entry))
    return refs


def list_folder(folder: str | Path) -> list[str]:
    """Every image file under ``folder`` (recursive, by extension), in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, name))
    return found


class ListSource:
    """Images named by references (paths or ``oss://`` keys), decoded on demand."""

    def __init__(self, refs: list[str], oss: OssReader | None = None) -> None:
        self.refs = refs
        self.oss = oss or OssReader()

    def __len__(self) -> int:
        return len(self.refs)

    def ref(self, index: int) -> str:
        return self.refs[index]

    def load(self, index: int) -> Image.Image:
        return load_image(self.refs[index], self.oss)


def open_source(
    source: str, *, root: str | None = None, split: str = "train", oss: OssReader | None = None
) -> ImageSource:
    """A list file, a folder of images, or a ``lookalike prep`` output folder (its ``split`` shards)."""
    from lookalike.trainer.data.shards import ShardSource

    if not is_oss(source) and Path(source).is_dir():
        if (Path(source) / MANIFEST).is_file():
            return ShardSource.from_manifest(Path(source), split)
        refs = list_folder(source)
        if not refs:
            raise ValueError(f"folder {source} holds no images with extensions {IMAGE_EXTENSIONS}")
        return ListSource(refs, oss)
    refs = read_image_list(source, root, oss)
    if not refs:
        raise ValueError(f"image list {source} holds no entries")
    return ListSource(refs, oss)


class SubsetSource:
    """The images of ``source`` at ``indices`` (e.g. the training part, without a held-out slice)."""

    def __init__(self, source: ImageSource, indices: list[int]) -> None:
        self.source = source
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def ref(self, index: int) -> str:
        return self.source.ref(self.indices[index])

    def load(self, index: int) -> Image.Image:
        return self.source.load(self.indices[index])
