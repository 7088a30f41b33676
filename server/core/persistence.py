"""What the core persists and how it comes back: log records, snapshots, exports, OSS shipping.

Layout of a data directory::

    wal/wal-<first seq>.log          the write-ahead log (storage/wal.py)
    snapshots/MANIFEST               the newest checkpoint, written last and atomically
    snapshots/dbs/<name>-<inc>/...   immutable checksummed files the manifest names

A checkpoint at log sequence G holds every database as of G; start-up loads it and replays
the log after G. Vector and per-row chunks that are full never change, so a checkpoint
rewrites only the partial last chunk, the live flags and the small metadata. With an OSS
root the same files are uploaded (files first, the manifest last) and the log is shipped as
pieces ``wal/<first seq>`` that chain by sequence number, so nothing ever has to be listed.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lookalike.server.core.commands import Command, decode, encode
from lookalike.server.core.database import Database, SnapshotView
from lookalike.server.core.errors import ErrorKind, LookalikeError
from lookalike.server.core.hnsw import HnswIndex, HnswSettings
from lookalike.server.core.index import STORAGE_DTYPES
from lookalike.server.storage.blobs import BlobStore, LocalBlobStore, fsync_dir, open_store
from lookalike.server.storage.segments import (
    CorruptionError,
    FileRef,
    as_bytes,
    block_crcs,
    get_json,
    get_manifest,
    load_array,
    put_file,
    put_json,
    put_manifest,
)
from lookalike.server.storage.wal import WriteAheadLog, iter_frames

from lookalike.oss import OssClient

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST"
EXPORT_MANIFEST = "lookalike-export.json"
PER_ROW = {"ids": np.int64, "group": np.int32, "intra": np.int64, "time": np.float64}
ROW_DTYPES = {**PER_ROW, "scale": np.float32}  # "scale": i8 databases only
FORMAT = 1


@dataclass
class Loaded:
    checkpoint_seq: int
    databases: list[Database]
    dedupe: list[list[Any]]


def _db_dir(meta: dict[str, Any]) -> str:
    return f"dbs/{meta['name']}-{meta['incarnation']}-{meta.get('layout', 0)}"


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
    if graph and view.graph is not None:
        ref, seq = put_graph(store, f"{prefix}/hnsw-{tag}", view.graph)
        entry["hnsw"] = {"file": ref.to_json(), "seq": seq}
    return entry


def read_entry(store: BlobStore, entry: dict[str, Any]) -> Database:
    """A database from its manifest entry; every file is verified against its checksums."""
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
    full = [load(r, np.float32, (rows_in(i), dim)) for i, r in enumerate(entry["full"])] if "full" in entry else None
    for arr in full or []:  # verified; re-ranking reads a few rows per search, so let the pages go
        _drop_pages(arr)
    attrs = get_json(store, FileRef.from_json(entry["attributes"])) if entry.get("attributes") else {}
    graph = None
    if entry.get("hnsw"):
        try:
            ref = FileRef.from_json(entry["hnsw"]["file"])
            graph = HnswIndex.load(load_array(store, ref, np.uint8, (ref.size,)), HnswSettings(),
                                   int(entry["hnsw"]["seq"]))  # fmt: skip
        except (CorruptionError, OSError, ValueError, RuntimeError) as exc:
            log.warning("the HNSW graph of %r is unreadable (%s); it is rebuilt in the background", meta["name"], exc)
    return Database.from_snapshot(meta, np.asarray(live), per_row, vectors, attrs, full, graph)


def _drop_pages(arr: np.ndarray) -> None:
    """Unmap a memory-mapped array's resident pages (they stay in the page cache, not in this process)."""
    mapped = getattr(arr, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def entry_files(entry: dict[str, Any]) -> list[dict[str, Any]]:
    attrs = [entry["attributes"]] if entry.get("attributes") else []
    graph = [entry["hnsw"]["file"]] if entry.get("hnsw") else []
    rows = (r for refs in entry["per_row"].values() for r in refs)
    return [entry["live"], *entry["vectors"], *entry.get("full", []), *rows, *attrs, *graph]


def entry_bytes(entry: dict[str, Any]) -> int:
    return sum(int(r["size"]) for r in entry_files(entry))


class Persistence:
    """The log, the local snapshots and, optionally, an OSS root that mirrors them."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        root: str | None = None,
        oss: OssClient | None = None,
        fsync: str = "batch",
        fsync_interval_s: float = 0.005,
        ship_interval_s: float = 1.0,
        repair: bool = False,
        segment_bytes: int = 64 << 20,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.local = LocalBlobStore(self.data_dir / "snapshots")
        self.remote: BlobStore | None = open_store(root, oss) if root else None
        self.wal = WriteAheadLog(
            self.data_dir / "wal", fsync=fsync, fsync_interval_s=fsync_interval_s, segment_bytes=segment_bytes
        )
        self.repair = repair
        self.ship_interval_s = ship_interval_s
        self.manifest: dict[str, Any] | None = None
        self.remote_manifest: dict[str, Any] | None = None
        self._remote_lock = threading.Lock()
        self._shipped = -1  # last seq in OSS; -1 until an OSS checkpoint succeeded in this process
        self._pieces: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._shipper: threading.Thread | None = None
        self.ship_error: str | None = None

    # -- start-up --------------------------------------------------------------------------
    def restore_from_remote_if_empty(self) -> bool:
        """A fresh machine: pull the newest snapshot and the shipped log from the OSS root."""
        if self.remote is None or self.local.exists(MANIFEST) or self.wal.segments():
            return False
        manifest = get_manifest(self.remote, MANIFEST)
        if manifest is None:
            return False
        for entry in manifest["databases"].values():
            for ref in entry_files(entry):
                data = self.remote.get(ref["name"])
                self.local.put(ref["name"], data)
        first = int(manifest["wal_resume_seq"])
        records = 0
        self.wal.directory.mkdir(parents=True, exist_ok=True)
        segment = self.wal.directory / f"wal-{first:020d}.log"
        with open(segment, "wb") as out:
            while True:
                try:
                    piece = self.remote.get(f"wal/{first:020d}")
                except FileNotFoundError:
                    break
                last = first - 1
                for seq, _ in iter_frames(piece, f"{self.remote.description}/wal/{first:020d}"):
                    last = seq
                    records += 1
                out.write(piece)
                first = last + 1
        if records == 0:
            segment.unlink()
        put_manifest(self.local, MANIFEST, manifest)
        log.info("restored %d databases and %d log records from %s", len(manifest["databases"]), records,
                 self.remote.description)  # fmt: skip
        return True

    def load(self) -> Loaded:
        manifest = get_manifest(self.local, MANIFEST)
        self.manifest = manifest
        if manifest is None:
            return Loaded(0, [], [])
        dbs = []
        for name, entry in list(manifest["databases"].items()):
            try:
                dbs.append(read_entry(self.local, entry))
            except (CorruptionError, OSError) as exc:
                if not self.repair:
                    raise
                log.error("repair: dropped database %r: its snapshot is damaged (%s)", name, exc)
                del manifest["databases"][name]
        return Loaded(int(manifest["checkpoint_seq"]), dbs, manifest.get("dedupe", []))

    def records(self, after_seq: int) -> Iterator[tuple[int, Command]]:
        for seq, payload in self.wal.scan(repair=self.repair):
            if seq > after_seq:
                yield seq, decode(payload)

    def open(self, after_seq: int) -> None:
        self.wal.open(after_seq=after_seq)

    # -- the log ---------------------------------------------------------------------------
    def log(self, cmd: Command) -> int:
        try:
            return self.wal.append(encode(cmd))
        except OSError as exc:
            raise LookalikeError(
                ErrorKind.UNAVAILABLE,
                "STORAGE_UNAVAILABLE",
                f"cannot write the log ({exc.strerror}); nothing was changed",
            ) from None

    def wait(self, seq: int) -> None:
        self.wal.wait_durable(seq)
        if self.remote is not None and self.wal.fsync == "always":
            if not self.ship(upto=seq):
                raise LookalikeError(
                    ErrorKind.UNAVAILABLE,
                    "OSS_UNAVAILABLE",
                    "the write is stored on this server's disk but could not be shipped to the OSS root yet "
                    f"({self.ship_error}); retry with the same request_id",
                )

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint(self, seq: int, views: dict[str, SnapshotView | None], dedupe: list[list[Any]]) -> dict[str, Any]:
        """Write a checkpoint at log sequence ``seq``; ``None`` views reuse the previous entry."""
        previous = (self.manifest or {}).get("databases", {})
        entries = {}
        for name, view in views.items():
            if view is None:
                entries[name] = previous[name]
                continue
            old = previous.get(name)
            if old is not None and old["meta"]["incarnation"] != view.meta["incarnation"]:
                old = None
            entries[name] = write_view(self.local, view, _db_dir(view.meta), str(seq), old, graph=True)
        manifest = {
            "format": FORMAT,
            "checkpoint_seq": seq,
            "wal_resume_seq": seq + 1,
            "time": time.time(),
            "databases": entries,
            "dedupe": dedupe,
        }
        put_manifest(self.local, MANIFEST, manifest)
        self.manifest = manifest
        for name, view in views.items():  # i8: full float32 chunks are on disk now; serve them from there
            if view is not None and view.on_saved is not None and "full" in entries[name]:
                view.on_saved([self._mapped(ref, int(view.meta["dimension"])) for ref in entries[name]["full"]])
        self._collect_local_garbage(manifest)
        if self.remote is None:
            self.wal.trim(seq)
        return manifest

    def _mapped(self, ref: dict[str, Any], dim: int) -> np.ndarray:
        """A just-written float32 chunk file, memory-mapped read-only (page cache, not process memory)."""
        rows = int(ref["size"]) // (4 * dim)
        if rows == 0:
            return np.zeros((0, dim), np.float32)
        return np.memmap(self.local.path(ref["name"]), np.float32, mode="r", shape=(rows, dim))

    def _collect_local_garbage(self, manifest: dict[str, Any]) -> None:
        keep = {ref["name"] for entry in manifest["databases"].values() for ref in entry_files(entry)}
        for name in self.local.names("dbs"):
            if name not in keep and "/.tmp-" not in name:
                self.local.delete(name)
        base = self.local.path("dbs")
        if base.is_dir():
            for folder in base.iterdir():
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()

    def push_remote(self) -> None:
        """Upload the local checkpoint to the OSS root: new files first, the manifest last."""
        if self.remote is None or self.manifest is None:
            return
        with self._remote_lock:
            manifest = self.manifest
            old = self.remote_manifest
            if old is None:
                try:
                    old = get_manifest(self.remote, MANIFEST)
                except CorruptionError:
                    old = None
            have = {r["name"] for e in (old or {}).get("databases", {}).values() for r in entry_files(e)}
            for entry in manifest["databases"].values():
                for ref in entry_files(entry):
                    if ref["name"] not in have:
                        self.remote.put(ref["name"], memoryview(self.local.get(ref["name"])))
            seq = int(manifest["checkpoint_seq"])
            # Log pieces: replay starts at the piece holding seq + 1 (pieces may straddle it).
            resume = next((first for first, last in self._pieces if last > seq), None)
            if resume is None:
                resume = (self._shipped + 1) if self._shipped >= 0 else seq + 1
                resume = min(resume, seq + 1)
            remote_manifest = {**manifest, "wal_resume_seq": resume}
            put_manifest(self.remote, MANIFEST, remote_manifest)
            keep = {r["name"] for e in manifest["databases"].values() for r in entry_files(e)}
            for name in sorted(have - keep):
                try:
                    self.remote.delete(name)
                except OSError:
                    log.warning("could not delete an old snapshot object from the OSS root; it is unused")
            for first, _ in [p for p in self._pieces if p[1] < resume]:
                try:
                    self.remote.delete(f"wal/{first:020d}")
                except OSError:
                    pass
            self._pieces = [p for p in self._pieces if p[1] >= resume]
            if self._shipped < 0:
                self._shipped = seq
            self.remote_manifest = remote_manifest
            self.wal.trim(min(seq, self._shipped))

    # -- shipping the log to OSS -----------------------------------------------------------
    def ship(self, upto: int | None = None) -> bool:
        """Upload log records not yet in OSS (up to ``upto`` at least); False when OSS is unreachable."""
        if self.remote is None:
            return True
        with self._remote_lock:
            try:
                if self._shipped < 0:
                    raise ConnectionError("waiting for the first snapshot upload")
                while upto is None or self._shipped < upto:
                    data, last = self.wal.read_since(self._shipped)
                    if not data:
                        break
                    first = self._shipped + 1
                    self.remote.put(f"wal/{first:020d}", data)
                    self._pieces.append((first, last))
                    self._shipped = last
                    if upto is None:
                        break
            except (OSError, ValueError) as exc:
                self.ship_error = str(exc)
                return False
        if self.ship_error is not None:
            log.info("shipping the log to the OSS root works again")
        self.ship_error = None
        return True

    def start_shipping(self, checkpoint: Any) -> None:
        """Background loop: push the first checkpoint (retrying), then ship the log every interval."""
        if self.remote is None:
            return

        def loop() -> None:
            backoff = self.ship_interval_s
            while not self._stop.is_set():
                ok = True
                try:
                    if self._shipped < 0:
                        checkpoint()
                    ok = self.ship()
                except (OSError, ValueError) as exc:
                    self.ship_error, ok = str(exc), False
                if ok:
                    backoff = self.ship_interval_s
                else:
                    log.warning("OSS root unreachable (%s); writes continue locally, retrying in %.1fs",
                                self.ship_error, backoff)  # fmt: skip
                    backoff = min(30.0, backoff * 2)
                self._stop.wait(backoff * (0.8 + 0.4 * random.random()) if not ok else backoff)

        self._shipper = threading.Thread(target=loop, name="oss-shipper", daemon=True)
        self._shipper.start()

    # -- exports ---------------------------------------------------------------------------
    def export(self, view: SnapshotView, location: str, oss: OssClient | None) -> dict[str, Any]:
        return write_export(view, location, oss)

    def close(self) -> None:
        self._stop.set()
        if self._shipper is not None:
            self._shipper.join(timeout=10)
        self.wal.close()


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
