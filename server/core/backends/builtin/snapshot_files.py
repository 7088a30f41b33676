"""Snapshot and export files of one database: written from a ``SnapshotView``, read back into a ``Database``.

The file format (chunks, live flags, attributes, the HNSW graph, each checksummed) lives
here; where the files go (local directory, OSS) is the storage layer's business.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from lookalike.server.core.backends.api import Entry
from lookalike.server.core.backends.builtin.commands import SetImages, SetItem
from lookalike.server.core.backends.builtin.database import Database, SnapshotView
from lookalike.server.core.backends.builtin.hnsw import HnswIndex, HnswSettings
from lookalike.server.core.backends.builtin.index import STORAGE_DTYPES
from lookalike.server.storage.blobs import BlobStore, LocalBlobStore, fsync_dir, open_store
from lookalike.server.storage.segments import (
    FileRef,
    as_bytes,
    block_crcs,
    get_json,
    get_manifest,
    load_array,
    put_file,
    put_json,
    put_manifest,
    verify,
)
from lookalike.server.storage.shipping import entry_bytes

from lookalike.oss import OssClient

log = logging.getLogger(__name__)
EXPORT_MANIFEST = "lookalike-export.json"
PER_ROW = {"ids": np.int64, "group": np.int32, "intra": np.int64, "time": np.float64}
ROW_DTYPES = {**PER_ROW, "scale": np.float32}  # "scale": i8 databases only
FORMAT = 1


def put_graph(store: BlobStore, name: str, graph: HnswIndex) -> tuple[FileRef, int]:
    """Save an HNSW graph as a checksummed file; on a local store straight to disk (no copy in memory)."""
    if not isinstance(store, LocalBlobStore):
        data, seq = graph.save()
        return put_file(store, name, data), seq
    target = store.path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}"
    try:
        _, seq = graph.save(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        data = np.memmap(tmp, np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        ref = FileRef(name, size, block_crcs(memoryview(data)))
        del data
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return ref, seq


def write_view(
    store: BlobStore, view: SnapshotView, prefix: str, tag: str, previous: dict[str, Any] | None, graph: bool = False
) -> dict:
    """Write one database's files; full chunks already named in ``previous`` are reused, not rewritten.

    ``graph``: also save a ready HNSW graph (checkpoints do; exports do not).
    """
    reuse = {}
    if previous is not None:
        for refs in (previous["vectors"], previous.get("full", []), *previous["per_row"].values()):
            for ref in refs:
                reuse[ref["name"]] = ref
    chunk_rows = int(view.meta["chunk_rows"])

    def put_chunks(kind: str, arrays: list[np.ndarray]) -> list[dict[str, Any]]:
        refs = []
        for i, arr in enumerate(arrays):
            full = len(arr) == chunk_rows
            name = f"{prefix}/{kind}-{i:06d}" + ("" if full else f"-{len(arr)}-{tag}")
            if full and name in reuse:
                refs.append(reuse[name])
            else:
                refs.append(put_file(store, name, as_bytes(arr)).to_json())
        return refs

    entry: dict[str, Any] = {
        "meta": view.meta,
        "n": view.n,
        "live": put_file(store, f"{prefix}/live-{tag}", as_bytes(view.live)).to_json(),
        "per_row": {kind: put_chunks(kind, view.per_row[kind]) for kind in view.per_row},
        "vectors": put_chunks("vec", view.vectors),
        "attributes": put_json(store, f"{prefix}/attrs-{tag}", view.attributes).to_json() if view.attributes else None,
    }
    if view.full is not None:
        entry["full"] = put_chunks("f32", view.full)
    if graph and view.graph is not None and view.graph.wait_settled():  # a graph loading at start-up: once in
        ref, seq = put_graph(store, f"{prefix}/hnsw-{tag}", view.graph)
        entry["hnsw"] = {"file": ref.to_json(), "seq": seq}
    return entry


def read_entry(store: BlobStore, entry: dict[str, Any], *, defer_full: bool = False) -> Database:
    """A database from its manifest entry; every file is verified against its checksums.

    ``defer_full`` (a local store): the float32 re-rank copy of an i8 database (four fifths of its bytes) is
    mapped unverified and left in ``db.unchecked`` for ``check_deferred``; the graph always loads on a thread.
    """
    meta, n = entry["meta"], int(entry["n"])
    chunk_rows, dim = int(meta["chunk_rows"]), int(meta["dimension"])

    def rows_in(i: int) -> int:
        return min(chunk_rows, n - i * chunk_rows)

    live = load_array(store, FileRef.from_json(entry["live"]), np.uint8, (n,))

    def load(ref: dict[str, Any], dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        return load_array(store, FileRef.from_json(ref), dtype, shape)

    per_row = {
        kind: [load(r, ROW_DTYPES[kind], (rows_in(i),)) for i, r in enumerate(refs)]
        for kind, refs in entry["per_row"].items()
    }
    dtype = STORAGE_DTYPES[meta.get("storage", "f32")]
    vectors = [load(r, dtype, (rows_in(i), dim)) for i, r in enumerate(entry["vectors"])]
    defer = defer_full and isinstance(store, LocalBlobStore)
    full_refs = [FileRef.from_json(r) for r in entry.get("full", [])]
    full = [load_array(store, ref, np.float32, (rows_in(i), dim), check=not defer) for i, ref in enumerate(full_refs)]
    if not defer:
        for arr in full:  # verified; re-ranking reads a few rows per search, so let the pages go
            _drop_pages(arr)
    attrs = get_json(store, FileRef.from_json(entry["attributes"])) if entry.get("attributes") else {}
    graph = None
    if entry.get("hnsw"):  # verified and loaded on a thread while start-up goes on (``HnswIndex.loading``)
        try:
            ref, seq = FileRef.from_json(entry["hnsw"]["file"]), int(entry["hnsw"]["seq"])
        except (KeyError, TypeError, ValueError) as exc:  # the entry itself; the file's own damage shows in the load
            log.warning("the HNSW graph of %r is unreadable (%s); it is rebuilt in the background", meta["name"], exc)
        else:
            graph = HnswIndex.loading(dim, HnswSettings(), seq, lambda: load_array(store, ref, np.uint8, (ref.size,)),
                                      meta["name"])  # fmt: skip
    check_keys(per_row, len(meta["group_names"]), np.asarray(live))
    db = Database.from_snapshot(meta, np.asarray(live), per_row, vectors, attrs, full, graph)
    if defer and full:
        db.unchecked = [(ref, arr, str(store.path(ref.name))) for ref, arr in zip(full_refs, full, strict=True)]
        db.checked.clear()
    return db


def check_deferred(db: Database) -> None:
    """Verify the files ``read_entry`` left unchecked (raises CorruptionError), letting each one's pages go."""
    for ref, arr, where in db.unchecked:
        verify(ref, memoryview(arr).cast("B"), where)
        _drop_pages(arr)
    db.unchecked = []


class RecordInvalid(ValueError):
    """A row whose key no write could have made (a hand-edited file with valid checksums)."""

    def __init__(self, position: int, why: str) -> None:
        super().__init__(f"record {position}: {why}")
        self.position = position
        self.why = why


def check_keys(per_row: dict[str, list[np.ndarray]], groups: int, live: np.ndarray) -> None:
    """Live rows' intra_ids in the API's range and group numbers that name a group, before any index is built."""
    from lookalike.server.core.validation import MAX_INTRA_ID

    if not len(live):
        return
    intra = np.concatenate(per_row["intra"])[: len(live)]
    group = np.concatenate(per_row["group"])[: len(live)]
    bad = np.flatnonzero((live != 0) & ((intra < 0) | (intra >= MAX_INTRA_ID) | (group < 0) | (group >= groups)))
    if len(bad):
        row = int(bad[0])
        raise RecordInvalid(row, f"intra_id {int(intra[row])} or group number {int(group[row])} is out of range")


def _drop_pages(arr: np.ndarray) -> None:
    """Unmap a memory-mapped array's resident pages (they stay in the page cache, not in this process)."""
    mapped = getattr(arr, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def write_export(view: SnapshotView, location: str, oss: OssClient | None) -> dict[str, Any]:
    """A self-contained, checksummed copy of one database (files first, the manifest last)."""
    store = open_store(location, oss)
    entry = write_view(store, view, "data", "export", None)
    put_manifest(store, EXPORT_MANIFEST, {"format": FORMAT, "time": time.time(), "database": entry})
    return entry


def read_export(location: str, oss: OssClient | None) -> Database:
    store = open_store(location, oss)
    manifest = get_manifest(store, EXPORT_MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"{store.description} holds no {EXPORT_MANIFEST}; is it an export?")
    return read_entry(store, manifest["database"])


def export_entries(
    name: str,
    dimension: int,
    model: dict[str, Any],
    create_time: float,
    batches: Iterator[list[Entry]],
    location: str,
    oss: OssClient | None,
    keep: str = "none",
) -> tuple[int, int]:
    """Rows from anywhere (the Milvus backend) written as an export: (bytes, images)."""
    copy = Database(name, dimension, model=model, create_time=create_time, keep=keep)
    for seq, rows in enumerate(batches, 1):
        if not rows:
            continue
        items = tuple(SetItem(e.group_id, e.intra_id, copy.next_image_id + i, "", e.attributes or None)
                      for i, e in enumerate(rows))  # fmt: skip
        vectors = np.stack([np.asarray(e.vector, np.float32) for e in rows])
        copy.apply_set(SetImages(name, items, vectors, time.time(), tuple(e.update_time for e in rows)), seq)
    copy.incarnation = 1
    entry = write_export(copy.snapshot_view(), location, oss)
    return entry_bytes(entry), copy.size
