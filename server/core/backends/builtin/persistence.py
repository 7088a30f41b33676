"""The built-in store's durability: its log records, its local checkpoints and their OSS mirror.

Layout of a data directory::

    wal/wal-<first seq>.log          the write-ahead log (storage/wal.py)
    snapshots/MANIFEST               the newest checkpoint, written last and atomically
    snapshots/dbs/<name>-<inc>/...   immutable checksummed files the manifest names

A checkpoint at log sequence G holds every database as of G; start-up loads it and replays
the log after G. Vector and per-row chunks that are full never change, so a checkpoint
rewrites only the partial last chunk, the live flags and the small metadata. With an OSS
root, ``storage/shipping.py`` mirrors the files and ships the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lookalike.server import defaults
from lookalike.server.core.backends.builtin.commands import Command, decode, encode
from lookalike.server.core.backends.builtin.database import Database, SnapshotView
from lookalike.server.core.backends.builtin.snapshot_files import (
    FORMAT,
    check_deferred,
    read_entry,
    write_export,
    write_view,
)
from lookalike.server.core.errors import ErrorKind, LookalikeError
from lookalike.server.storage.blobs import BlobStore, LocalBlobStore, open_store
from lookalike.server.storage.segments import CorruptionError, get_manifest, put_manifest
from lookalike.server.storage.shipping import MANIFEST, SnapshotMirror, entry_files
from lookalike.server.storage.wal import WriteAheadLog

from lookalike.oss import OssClient

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    checkpoint_seq: int
    databases: list[Database]
    dedupe: list[list[Any]]


def _db_dir(meta: dict[str, Any]) -> str:
    return f"dbs/{meta['name']}-{meta['incarnation']}-{meta.get('layout', 0)}"


class Persistence:
    """The log, the local snapshots and, optionally, an OSS root that mirrors them."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        root: str | None = None,
        oss: OssClient | None = None,
        fsync: str = defaults.FSYNC,
        fsync_interval_s: float = defaults.FSYNC_INTERVAL_MS / 1000.0,
        ship_interval_s: float = defaults.SHIP_INTERVAL_S,
        repair: bool = False,
        segment_bytes: int = 64 << 20,
        check_in_background: bool = False,
        on_damage: Callable[[str, str], None] | None = None,
    ) -> None:
        """``check_in_background``: start-up maps i8 databases' float32 copies unverified and checks them on a
        thread while the server answers (not with ``repair``, which must see damage before serving); damage
        found there marks the database damaged (it refuses calls and snapshots) and calls ``on_damage(name,
        why)``."""
        self.data_dir = Path(data_dir)
        self.local = LocalBlobStore(self.data_dir / "snapshots")
        self.remote: BlobStore | None = open_store(root, oss) if root else None
        self.wal = WriteAheadLog(
            self.data_dir / "wal", fsync=fsync, fsync_interval_s=fsync_interval_s, segment_bytes=segment_bytes
        )
        self.repair = repair
        self.check_in_background = check_in_background and not repair
        self.on_damage = on_damage
        self.manifest: dict[str, Any] | None = None
        self.loaded_manifest: dict[str, Any] | None = None  # the checkpoint start-up read
        self.mirror = SnapshotMirror(self.local, self.remote, self.wal, ship_interval_s) if self.remote else None

    @property
    def ship_error(self) -> str | None:
        return self.mirror.ship_error if self.mirror is not None else None

    def restore_from_remote_if_empty(self) -> bool:
        return self.mirror.restore_from_remote_if_empty() if self.mirror is not None else False

    def snapshot_in_remote(self) -> bool | None:
        """Whether the OSS root holds the checkpoint ``load`` read (false without a root; None: OSS cannot say
        now)."""
        return self.mirror.holds(self.loaded_manifest) if self.mirror is not None else False

    def push_remote(self) -> None:
        if self.mirror is not None:
            self.mirror.push(self.manifest)

    def ship(self, upto: int | None = None) -> bool:
        """Upload log records not yet in OSS (up to ``upto`` at least); False when OSS is unreachable."""
        return self.mirror.ship(upto) if self.mirror is not None else True

    def start_shipping(self, checkpoint: Callable[[], Any]) -> None:
        if self.mirror is not None:
            self.mirror.start_shipping(checkpoint)

    # -- start-up --------------------------------------------------------------------------
    def load(self) -> Loaded:
        manifest = get_manifest(self.local, MANIFEST)
        self.manifest = manifest
        if manifest is None:
            return Loaded(0, [], [])
        dbs = []
        for name, entry in list(manifest["databases"].items()):
            try:
                dbs.append(read_entry(self.local, entry, defer_full=self.check_in_background))
            except (CorruptionError, OSError) as exc:
                if not self.repair:
                    raise
                log.error("repair: dropped database %r: its snapshot is damaged (%s)", name, exc)
                del manifest["databases"][name]
        self.loaded_manifest = manifest
        if any(db.unchecked for db in dbs):
            threading.Thread(target=self._check, args=(dbs,), name="snapshot-check", daemon=True).start()
        return Loaded(int(manifest["checkpoint_seq"]), dbs, manifest.get("dedupe", []))

    def _check(self, dbs: list[Database]) -> None:
        """The files start-up left unverified, one database at a time (reading them is the cost, not the CRC)."""
        for db in dbs:
            if not db.unchecked:
                continue
            started = time.monotonic()
            try:
                check_deferred(db)
            except (CorruptionError, OSError) as exc:
                db.damaged = str(exc)
                log.critical("the snapshot of database %r is damaged (%s)", db.name, exc)
            else:
                log.info("snapshot of %r verified in %.1fs (its float32 copy, after start-up)", db.name,
                         time.monotonic() - started)  # fmt: skip
            finally:
                db.checked.set()
            if db.damaged is not None and self.on_damage is not None:
                self.on_damage(db.name, db.damaged)

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

    # -- exports ---------------------------------------------------------------------------
    def export(self, view: SnapshotView, location: str, oss: OssClient | None) -> dict[str, Any]:
        return write_export(view, location, oss)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.stop()
        self.wal.close()
