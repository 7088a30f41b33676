"""Snapshots and exports of the built-in catalog: every changed database at one log position.

A checkpoint compacts what retired rows crowd, writes the changed databases' files, trims the
log they cover and, with an OSS root, uploads them and the kept images they reference. Split
from ``catalog.py`` (the write path) because it only reads the databases, under the same locks.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lookalike.server.core.backends.api import SnapshotInfo
from lookalike.server.core.backends.builtin.memory import release_free_memory
from lookalike.server.core.backends.exports import export_failed
from lookalike.server.core.errors import ErrorKind, LookalikeError
from lookalike.server.storage.shipping import entry_bytes

log = logging.getLogger("lookalike.server.core.backends.builtin.catalog")
COMPACT_MIN_DEAD = 4096  # compact at a snapshot when retired rows exceed this and the live rows


class Checkpoints:
    """Mixed into ``Catalog``: checkpoint, snapshot_database, export."""

    def checkpoint(self, *, push: bool = True) -> SnapshotInfo:
        """Snapshot every changed database at one log position; trim the log it covers."""
        self._require_ready()
        p = self.persistence
        if p is None:
            raise LookalikeError(
                ErrorKind.FAILED_PRECONDITION, "PERSISTENCE_DISABLED", "this server keeps databases in memory only"
            )
        for db in list(self._dbs.values()):  # start-up's deferred file checks, before any lock writes need
            db.checked.wait()
        with self._checkpoint_lock:
            with self._write_lock:
                for db in self._dbs.values():  # reclaim retired rows before they are written again
                    if db.dead_rows > max(COMPACT_MIN_DEAD, db.size):
                        reclaimed = db.compact()
                        db.snapshot_seq = -1  # rows moved: the whole database is written anew
                        log.info("compacted %r: %d retired rows reclaimed", db.name, reclaimed)
                seq = p.wal.last_seq
                known = (p.manifest or {}).get("databases", {})
                views = {}
                for name, db in self._dbs.items():
                    entry = known.get(name)
                    clean = db.snapshot_seq == db.applied_seq and entry is not None
                    same = entry is not None and int(entry["meta"]["incarnation"]) == db.incarnation
                    views[name] = None if clean and same else db.snapshot_view()
                dedupe = [
                    [db_name, request_id, r.key[0], r.key[1], r.replaced, fingerprint]
                    for db_name, window in self._requests.items()
                    for request_id, r, fingerprint in window.items()
                ]
                p.wal.rotate()
            try:
                manifest = p.checkpoint(seq, views, dedupe)
            except OSError as exc:
                raise LookalikeError(
                    ErrorKind.UNAVAILABLE, "STORAGE_UNAVAILABLE", f"the snapshot could not be written ({exc})"
                ) from None
            for name, view in views.items():
                if view is not None and name in self._dbs:
                    self._dbs[name].snapshot_seq = int(view.meta["applied_seq"])
            if push and p.remote is not None:
                try:
                    self.kept.push(p.snapshot_in_remote)  # the blobs first: the manifest uploaded next names them
                    p.push_remote()
                    self.kept.collect_remote()
                except (OSError, ValueError) as exc:
                    raise LookalikeError(
                        ErrorKind.UNAVAILABLE, "OSS_UNAVAILABLE",
                        f"the snapshot is durable on this server but could not be uploaded to the OSS root ({exc}); "
                        "it is retried in the background",
                    ) from None  # fmt: skip
            info = SnapshotInfo(
                time=float(manifest["time"]),
                size_bytes=sum(entry_bytes(e) for e in manifest["databases"].values()),
                image_count=sum(int(e["meta"]["size"]) for e in manifest["databases"].values()),
                checkpoint_seq=seq,
            )
            self.last_checkpoint = info
        release_free_memory()  # rows moved to memory-mapped files: give the freed heap back
        return info

    def snapshot_database(self, name: str) -> SnapshotInfo:
        self.get(name, usable=False)
        info = self.checkpoint()
        entry = (self.persistence.manifest or {})["databases"][name]  # type: ignore[union-attr]
        return SnapshotInfo(info.time, entry_bytes(entry), int(entry["meta"]["size"]), info.checkpoint_seq)

    def export(self, name: str, location: str, oss: Any = None) -> SnapshotInfo:
        db = self.get(name, usable=False)
        view = db.snapshot_view()
        if self.persistence is None:
            raise LookalikeError(
                ErrorKind.FAILED_PRECONDITION, "PERSISTENCE_DISABLED", "this server keeps databases in memory only"
            )
        try:
            entry = self.persistence.export(view, location, oss)
        except (OSError, ValueError) as exc:
            raise export_failed(location, exc) from None
        return SnapshotInfo(time.time(), entry_bytes(entry), int(entry["meta"]["size"]), db.applied_seq)
