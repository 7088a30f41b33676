"""Mirroring a data directory to an OSS root: snapshot files, the manifest, and the log in pieces.

Files are uploaded first and the manifest last; the log is shipped as pieces
``wal/<first seq>`` that chain by sequence number, so nothing ever has to be listed (oss2's
list calls do not parse every S3-compatible store). A fresh machine restores from the root.
This layer knows the manifest's file lists and the log's frames, nothing of databases.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from lookalike.server.storage.blobs import BlobStore, LocalBlobStore
from lookalike.server.storage.segments import CorruptionError, get_manifest, put_manifest
from lookalike.server.storage.wal import WriteAheadLog, iter_frames

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST"


def entry_files(entry: dict[str, Any]) -> list[dict[str, Any]]:
    attrs = [entry["attributes"]] if entry.get("attributes") else []
    graph = [entry["hnsw"]["file"]] if entry.get("hnsw") else []
    rows = (r for refs in entry["per_row"].values() for r in refs)
    return [entry["live"], *entry["vectors"], *entry.get("full", []), *rows, *attrs, *graph]


def entry_bytes(entry: dict[str, Any]) -> int:
    return sum(int(r["size"]) for r in entry_files(entry))


class SnapshotMirror:
    """Keeps the OSS root a copy of the local checkpoint plus the log shipped since it."""

    def __init__(self, local: LocalBlobStore, remote: BlobStore, wal: WriteAheadLog, ship_interval_s: float) -> None:
        self.before_ship: Callable[[], Any] | None = None  # uploads what the records about to be shipped refer to
        self.local = local
        self.remote = remote
        self.wal = wal
        self.ship_interval_s = ship_interval_s
        self.remote_manifest: dict[str, Any] | None = None
        self._remote_lock = threading.Lock()
        self.shipped = -1  # last seq in OSS; -1 until an OSS checkpoint succeeded in this process
        self._pieces: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._shipper: threading.Thread | None = None
        self.ship_error: str | None = None

    def restore_from_remote_if_empty(self) -> bool:
        """A fresh machine: pull the newest snapshot and the shipped log from the OSS root."""
        if self.local.exists(MANIFEST) or self.wal.segments():
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

    def holds(self, manifest: dict[str, Any] | None) -> bool | None:
        """Whether the OSS root's manifest is ``manifest`` (the local checkpoint was uploaded whole); one GET.
        None when OSS cannot say now (unreachable, or its manifest damaged): ask again later."""
        if manifest is None:
            return False
        try:
            remote = get_manifest(self.remote, MANIFEST)
        except (OSError, ValueError, CorruptionError):
            return None
        if remote is None:
            return False
        with self._remote_lock:
            if self.remote_manifest is None:
                self.remote_manifest = remote  # what the next push compares against: saves it a GET

        def same(m: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in m.items() if k != "wal_resume_seq"}  # where log replay starts: OSS's own

        return same(remote) == same(manifest)

    def push(self, manifest: dict[str, Any] | None) -> None:
        """Upload the local checkpoint to the OSS root: new files first, the manifest last."""
        if manifest is None:
            return
        with self._remote_lock:
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
                resume = (self.shipped + 1) if self.shipped >= 0 else seq + 1
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
            if self.shipped < 0:
                self.shipped = seq
            self.remote_manifest = remote_manifest
            self.wal.trim(min(seq, self.shipped))

    def ship(self, upto: int | None = None) -> bool:
        """Upload log records not yet in OSS (up to ``upto`` at least); False when OSS is unreachable."""
        with self._remote_lock:
            try:
                if self.shipped < 0:
                    raise ConnectionError("waiting for the first snapshot upload")
                limit = self.wal.last_seq if upto is None else upto
                if self.before_ship is not None:  # what records <= limit name (kept images) is in OSS first
                    self.before_ship()
                while self.shipped < limit:
                    data, last = self.wal.read_since(self.shipped, upto=limit)
                    if not data:
                        break
                    first = self.shipped + 1
                    self.remote.put(f"wal/{first:020d}", data)
                    self._pieces.append((first, last))
                    self.shipped = last
            except (OSError, ValueError) as exc:
                self.ship_error = str(exc)
                return False
        if self.ship_error is not None:
            log.info("shipping the log to the OSS root works again")
        self.ship_error = None
        return True

    def start_shipping(self, checkpoint: Callable[[], Any]) -> None:
        """Background loop: push the first checkpoint (retrying), then ship the log every interval."""

        def loop() -> None:
            backoff = self.ship_interval_s
            while not self._stop.is_set():
                ok = True
                try:
                    if self.shipped < 0:
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

    def stop(self) -> None:
        self._stop.set()
        if self._shipper is not None:
            self._shipper.join(timeout=10)
