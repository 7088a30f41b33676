"""Immutable, checksummed files: a CRC32C per 4 MiB block, so damage is reported with its offset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import crc32c
import numpy as np
from lookalike.server.storage.blobs import BlobStore, LocalBlobStore

BLOCK = 4 << 20


class CorruptionError(Exception):
    """Stored bytes do not match their checksum; names the file and the offset."""

    def __init__(self, where: str, offset: int, detail: str) -> None:
        super().__init__(f"{where}: damaged at byte offset {offset}: {detail}")
        self.where = where
        self.offset = offset


@dataclass(frozen=True)
class FileRef:
    """What a manifest says of one file: its name, size and block checksums."""

    name: str
    size: int
    crcs: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "crcs": list(self.crcs)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FileRef:
        return cls(str(obj["name"]), int(obj["size"]), tuple(int(c) for c in obj["crcs"]))


def block_crcs(data: bytes | memoryview) -> tuple[int, ...]:
    view = memoryview(data).cast("B")
    return tuple(crc32c.crc32c(view[i : i + BLOCK]) for i in range(0, len(view), BLOCK)) or (0,)


def verify(ref: FileRef, data: bytes | memoryview, where: str) -> None:
    view = memoryview(data).cast("B")
    if len(view) != ref.size:
        raise CorruptionError(where, min(len(view), ref.size), f"size {len(view)}, manifest says {ref.size}")
    for i, expected in enumerate(ref.crcs):
        if crc32c.crc32c(view[i * BLOCK : (i + 1) * BLOCK]) != expected:
            raise CorruptionError(where, i * BLOCK, f"checksum mismatch in the {BLOCK >> 20} MiB block there")


def as_bytes(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array)).cast("B")


def put_file(store: BlobStore, name: str, data: bytes | memoryview) -> FileRef:
    ref = FileRef(name, len(memoryview(data).cast("B")), block_crcs(data))
    store.put(name, data)
    return ref


def get_file(store: BlobStore, ref: FileRef) -> bytes:
    data = store.get(ref.name)
    verify(ref, data, f"{store.description}/{ref.name}")
    return data


def load_array(
    store: BlobStore, ref: FileRef, dtype: np.dtype | type, shape: tuple[int, ...], *, check: bool = True
) -> np.ndarray:
    """The array stored in ``ref``; memory-mapped copy-on-write when the store is a local directory.

    ``check=False`` (local files only): mapped unverified; the caller runs ``verify`` on it later."""
    if isinstance(store, LocalBlobStore):
        path = store.path(ref.name)
        if ref.size == 0:
            return np.zeros(shape, dtype)
        try:
            arr = np.memmap(path, dtype=dtype, mode="c", shape=shape)
        except (OSError, ValueError) as exc:
            raise CorruptionError(str(path), 0, f"cannot map it ({exc})") from None
        if check:
            verify(ref, memoryview(arr).cast("B"), str(path))
        return arr
    data = get_file(store, ref)
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def put_json(store: BlobStore, name: str, obj: Any) -> FileRef:
    return put_file(store, name, json.dumps(obj, separators=(",", ":")).encode())


def get_json(store: BlobStore, ref: FileRef) -> Any:
    return json.loads(get_file(store, ref))


def put_manifest(store: BlobStore, name: str, body: dict[str, Any]) -> None:
    """A manifest carries its own checksum; it is written last, atomically (rename, or one PUT)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    store.put(name, json.dumps({"crc32c": crc32c.crc32c(text.encode()), "body": text}).encode())


def get_manifest(store: BlobStore, name: str) -> dict[str, Any] | None:
    """The manifest, or None when there is none; raises CorruptionError when it is damaged."""
    try:
        raw = store.get(name)
    except FileNotFoundError:
        return None
    where = f"{store.description}/{name}"
    try:
        outer = json.loads(raw)
        text = outer["body"]
        ok = crc32c.crc32c(text.encode()) == outer["crc32c"]
    except (ValueError, KeyError, TypeError):
        raise CorruptionError(where, 0, "not a manifest (unparseable)") from None
    if not ok:
        raise CorruptionError(where, 0, "manifest checksum mismatch")
    return json.loads(text)
