"""Tar shards in the ``webdataset`` layout, written by ``lookalike prep`` and read by index.

Each sample is ``<key>.jpg`` (or ``.png``) plus ``<key>.json`` (source reference and size), so
any ``webdataset.WebDataset`` pipeline can stream them. For training they are read by random
access instead, through an index of the tar headers (prep writes it beside each shard as
``<shard>.idx``, so start-up does not rescan millions of headers), so the same seeded sampler,
resume logic and per-rank split serve lists, folders and shards alike.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lookalike.trainer.data.images import UnreadableImage, decode_image
from PIL import Image

MANIFEST = "prep.json"
MANIFEST_FORMAT = "lookalike-shards/1"
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


def shard_name(prefix: str, split: str, index: int) -> str:
    return f"{prefix}-{split}-{index:06d}.tar"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``prep.json`` last (after every shard), so its presence means the shards are complete."""
    path = folder / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, **manifest}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable prep manifest ({exc}); rerun `lookalike prep`") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


@dataclass(frozen=True)
class _Entry:
    shard: int
    key: str
    offset: int
    size: int


def index_shard(path: Path) -> list[tuple[str, int, int]]:
    """``(key, data offset, size)`` of the image member of every sample in one tar, in order (a scan of the headers)."""
    found = []
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, suffix = member.name.partition(".")
            if suffix.lower() in IMAGE_SUFFIXES:
                found.append((key, member.offset_data, member.size))
    return found


def index_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".idx")


def write_shard_index(shard: Path) -> Path:
    """Write ``<shard>.idx`` (one ``key offset size`` line per image) so readers need not scan the tar."""
    path = index_path(shard)
    lines = [f"{key} {offset} {size}\n" for key, offset, size in index_shard(shard)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    tmp.replace(path)
    return path


def load_shard_index(shard: Path) -> list[tuple[str, int, int]]:
    """The ``.idx`` sidecar written by prep when it is current, else a scan of the tar headers."""
    path = index_path(shard)
    try:
        if path.stat().st_mtime >= shard.stat().st_mtime:
            rows = [line.split() for line in path.read_text().splitlines() if line]
            return [(key, int(offset), int(size)) for key, offset, size in rows]
    except (OSError, ValueError):
        pass  # missing or damaged sidecar: fall back to scanning
    return index_shard(shard)


class ShardSource:
    """Random access to the images of a list of tar shards."""

    def __init__(self, shards: list[Path]) -> None:
        self.shards = [Path(s) for s in shards]
        self._entries: list[_Entry] = []
        for i, shard in enumerate(self.shards):
            self._entries.extend(_Entry(i, key, off, size) for key, off, size in load_shard_index(shard))
        self._handles: dict[int, BinaryIO] = {}
        self._pid = os.getpid()

    @classmethod
    def from_manifest(cls, folder: Path, split: str) -> ShardSource:
        manifest = read_manifest(folder)
        splits = manifest.get("splits", {})
        if split not in splits:
            raise ValueError(f"{folder / MANIFEST} has no split {split!r}; it has {sorted(splits)}")
        shards = [folder / name for name in splits[split]["shards"]]
        if not shards:
            raise ValueError(f"split {split!r} of {folder} is empty; rerun prep with another --test-ratio")
        return cls(shards)

    def __getstate__(self) -> dict[str, Any]:
        # File handles stay in the process that opened them; workers reopen their own.
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return len(self._entries)

    def ref(self, index: int) -> str:
        entry = self._entries[index]
        return f"{self.shards[entry.shard]}#{entry.key}"

    def read(self, index: int) -> bytes:
        entry = self._entries[index]
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(entry.shard)
        if handle is None:
            handle = self._handles[entry.shard] = open(self.shards[entry.shard], "rb")
        handle.seek(entry.offset)
        data = handle.read(entry.size)
        if len(data) != entry.size:
            raise UnreadableImage(self.ref(index), "shard is truncated")
        return data

    def load(self, index: int) -> Image.Image:
        return decode_image(self.read(index), self.ref(index))
