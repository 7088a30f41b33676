"""The databases a server holds, and the one path every mutation takes: plan, log, apply.

A mutation is planned (ids and timestamps chosen) and logged and applied under one write
lock, so the log order is the apply order; waiting for durability happens outside the lock,
where concurrent writers share an fsync. Transports only translate into these calls.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from lookalike.server.core.backends.api import (
    RETRY_WINDOW,
    RetryPlan,
    SetRequest,
    SetResult,
    SnapshotInfo,
    database_exists,
    database_not_found,
    database_replaced,
    foreign_among,
    not_ready,
    write_cancelled,
)
from lookalike.server.core.backends.builtin.checkpointing import COMPACT_MIN_DEAD, Checkpoints
from lookalike.server.core.backends.builtin.commands import (
    ClearDatabase,
    Command,
    CreateDatabase,
    DeleteGroup,
    DeleteImage,
    DropDatabase,
    RenameDatabases,
    ReplaceDatabase,
    SetImages,
    SetItem,
)
from lookalike.server.core.backends.builtin.database import Database
from lookalike.server.core.backends.builtin.hnsw import HnswIndex, HnswSettings
from lookalike.server.core.backends.builtin.index import STORAGE_DTYPES
from lookalike.server.core.backends.builtin.kept_refs import KeptRefs
from lookalike.server.core.backends.builtin.persistence import Persistence
from lookalike.server.core.backends.builtin.requests import RequestWindow
from lookalike.server.core.backends.duplicates import DuplicateCheck, screen
from lookalike.server.core.backends.exports import ExportedDatabase
from lookalike.server.core.errors import LookalikeError, invalid
from lookalike.server.core.validation import LOAD_PREFIX, check_stored_name, kept_digests
from lookalike.server.storage.image_store import ImageStore
from lookalike.server.storage.shipping import entry_bytes

log = logging.getLogger(__name__)
__all__ = ["COMPACT_MIN_DEAD", "Catalog"]


class Catalog(Checkpoints):
    """The built-in index backend: databases in this process, made durable by the WAL and snapshots."""

    def __init__(
        self,
        dimension: int,
        model: dict[str, Any],
        persistence: Persistence | None = None,
        *,
        retry_window: int = RETRY_WINDOW,
        hnsw: HnswSettings | None = None,
        images: ImageStore | None = None,
    ) -> None:
        """``images`` holds the kept images; the catalog counts their references and frees the unreferenced."""
        self.hnsw = hnsw
        self.images = images
        self.dimension = dimension
        self.model = model
        self.loaded: list[tuple[dict[str, Any], int]] = [(model, dimension)]  # every model served; first = default
        self.persistence = persistence
        self.ready = threading.Event()
        self._write_lock = threading.Lock()
        self.kept = KeptRefs(images, self._write_lock)  # who references each kept image
        self._dropped_graphs: weakref.WeakSet[HnswIndex] = weakref.WeakSet()  # stopping: close waits for them
        self._checkpoint_lock = threading.Lock()
        self._dbs: dict[str, Database] = {}
        self._requests: dict[str, RequestWindow] = {}  # database -> its retry window
        self._retry_window = retry_window
        self._seq = 0  # in-memory sequence when there is no log
        self.last_checkpoint: SnapshotInfo | None = None
        if persistence is None:
            self.ready.set()

    # -- start-up --------------------------------------------------------------------------
    def recover(self) -> None:
        """Load the newest snapshot, replay the log after it, then accept calls."""
        assert self.persistence is not None
        started = time.monotonic()
        p = self.persistence
        p.restore_from_remote_if_empty()
        loaded = p.load()
        for db in loaded.databases:
            self._check_model(db)
            db.hnsw_settings = self.hnsw
            self._dbs[db.name] = db
            self.kept.add(db.kept_digests())
        for db_name, request_id, group_id, intra_id, replaced, *fingerprint in loaded.dedupe:
            if db_name in self._dbs:
                self._window(db_name).remember(request_id, (group_id, int(intra_id)), bool(replaced),
                                               fingerprint[0] if fingerprint else "")  # fmt: skip
        replayed = 0
        self.kept.snapshot_loaded()
        for seq, cmd in p.records(loaded.checkpoint_seq):
            try:
                self._apply(cmd, seq)
            except LookalikeError as err:  # the log holds only commands that applied; say so if one does not
                log.warning("log record %d (%s) did not apply on replay: %s", seq, type(cmd).__name__, err.message)
            replayed += 1
        p.open(loaded.checkpoint_seq)
        self._seq = p.wal.last_seq
        self.kept.replayed()
        for name in [n for n in self._dbs if n.startswith(LOAD_PREFIX)]:  # this process owns them: none is running
            log.warning("dropping %r: a load that did not finish before the server stopped", name)
            self._wait(self._commit(DropDatabase(name))[0])
        for db in self._dbs.values():  # large databases get their HNSW graph rebuilt in the background
            with db.lock:
                db._maybe_build_graph()
        log.info(
            "recovered %d databases (%d images) from the snapshot at log record %d and %d later records in %.2fs",
            len(self._dbs), sum(db.size for db in self._dbs.values()), loaded.checkpoint_seq, replayed,
            time.monotonic() - started,
        )  # fmt: skip
        self.ready.set()
        if self.images is not None:
            self.kept.free()
            threading.Thread(target=self.kept.sweep, name="image-sweep", daemon=True).start()

    def _check_model(self, db: Database) -> None:
        db.foreign = foreign_among(db.name, db.model, db.dimension, self.loaded)
        if db.foreign is not None:
            log.warning("%s", db.foreign)

    # -- the write path ----------------------------------------------------------------------
    def _log(self, cmd: Command) -> int:
        if self.persistence is None:
            self._seq += 1
            return self._seq
        return self.persistence.log(cmd)

    def _wait(self, seq: int) -> None:
        if self.persistence is not None:
            self.persistence.wait(seq)

    def _apply(self, cmd: Command, seq: int) -> Any:
        """Apply one logged command, and count the kept images it references and releases."""
        if isinstance(cmd, RenameDatabases):
            gone = [self._dbs[n] for n in cmd.dropped(set(self._dbs))]
        else:
            one = self._dbs.get(cmd.db) if isinstance(cmd, (DropDatabase, ReplaceDatabase)) else None
            gone = [one] if one is not None else []
        released = [d for db in gone for d in db.kept_digests()]
        result = self._apply_command(cmd, seq)
        for db in gone:  # a graph still built for a dropped database would hold its rows and two cores for nothing
            if db.hnsw is not None:
                db.hnsw.stop_building(wait=False)
                self._dropped_graphs.add(db.hnsw)
        if isinstance(cmd, SetImages):
            self.kept.add(d for item in cmd.items for d in kept_digests(item.attributes))
        db = self._dbs.get(cmd.db)
        if db is not None and db.released:
            released += db.released
            db.released = []
        self.kept.release(released)
        return result

    def _apply_command(self, cmd: Command, seq: int) -> Any:
        if isinstance(cmd, CreateDatabase):
            db = Database(cmd.db, cmd.dimension, model=cmd.model, create_time=cmd.time, storage=cmd.storage,
                          keep=cmd.keep)  # fmt: skip
            db.incarnation = db.applied_seq = seq
            db.hnsw_settings = self.hnsw
            self._check_model(db)
            self._dbs[cmd.db] = db
            self._requests.pop(cmd.db, None)
            return db
        if isinstance(cmd, DropDatabase):
            self._requests.pop(cmd.db, None)
            return self._dbs.pop(cmd.db)
        if isinstance(cmd, ReplaceDatabase):
            return self._apply_replace(cmd, seq)
        if isinstance(cmd, RenameDatabases):
            return self._apply_rename(cmd, seq)
        db = self._dbs.get(cmd.db)
        if db is None:
            raise database_not_found(cmd.db)
        if isinstance(cmd, SetImages):
            replaced = db.apply_set(cmd, seq)
            window = self._window(cmd.db)
            for item, rep in zip(cmd.items, replaced, strict=True):
                window.remember(item.request_id, (item.group_id, item.intra_id), rep, item.fingerprint)
            return replaced
        if isinstance(cmd, DeleteImage):
            self._window(cmd.db).forget_key((cmd.group_id, cmd.intra_id))
            return db.apply_delete(cmd.group_id, cmd.intra_id, seq)
        if isinstance(cmd, DeleteGroup):
            self._window(cmd.db).forget_group(cmd.group_id)
            return db.apply_delete_group(cmd.group_id, seq)
        if isinstance(cmd, ClearDatabase):
            self._requests.pop(cmd.db, None)
            return db.apply_clear(seq)
        raise TypeError(f"not a command: {cmd!r}")

    def _commit(self, cmd: Command) -> Any:
        """Log then apply, under the write lock (the caller holds it)."""
        seq = self._log(cmd)
        return seq, self._apply(cmd, seq)

    def _window(self, name: str) -> RequestWindow:
        window = self._requests.get(name)
        if window is None:
            window = self._requests[name] = RequestWindow(self._retry_window)
        return window

    def _apply_replace(self, cmd: ReplaceDatabase, seq: int) -> Database:
        """``cmd.source`` takes the name ``cmd.db``; whatever had that name is dropped."""
        db = self._dbs.pop(cmd.source, None)
        if db is None:
            raise database_not_found(cmd.source)
        self._dbs.pop(cmd.db, None)
        self._requests.pop(cmd.db, None)
        self._requests.pop(cmd.source, None)
        with db.lock:
            db.name = cmd.db
            db.snapshot_seq = -1  # its files are named by the database name: written anew
            db.applied_seq = seq
        self._dbs[cmd.db] = db
        return db

    def _apply_rename(self, cmd: RenameDatabases, seq: int) -> list[Database]:
        """Every source takes its target name at once (a swap works); a target not moving itself is dropped."""
        for name in cmd.dropped(set(self._dbs)):
            self._dbs.pop(name)
            self._requests.pop(name, None)
        moving = [(self._dbs.pop(src), self._requests.pop(src, None), dst) for src, dst in cmd.moves]
        for db, window, dst in moving:
            with db.lock:
                db.name = dst
                db.snapshot_seq = -1  # its files are named by the database name: written anew
                db.applied_seq = seq
            self._dbs[dst] = db
            self._requests.pop(dst, None)
            if window is not None:
                self._requests[dst] = window
        return [db for db, _, _ in moving]

    def _require_ready(self) -> None:
        if not self.ready.is_set():
            raise not_ready("RECOVERING", "the server is loading its databases; retry in a few seconds")

    def _get_locked(self, name: str) -> Database:
        db = self._dbs.get(name)
        if db is None:
            raise database_not_found(name)
        return db

    # -- databases -------------------------------------------------------------------------
    def serve_models(self, loaded: list[tuple[dict[str, Any], int]]) -> None:
        """The models this server runs (identity, dimension), the default first: databases of others are foreign."""
        self.loaded = list(loaded)
        self.model, self.dimension = loaded[0]
        for db in self._dbs.values():
            self._check_model(db)

    def create(self, name: str, storage: str = "", keep: str = "none",
               model: tuple[dict[str, Any], int] | None = None) -> Database:  # fmt: skip
        """``model``: (identity, dimension) of the model it is bound to (default: the server's default model)."""
        check_stored_name(name)
        storage = storage or "f32"
        if storage not in STORAGE_DTYPES:
            raise invalid("STORAGE_INVALID", f"storage {storage!r} is not one of {', '.join(STORAGE_DTYPES)}")
        self._require_ready()
        with self._write_lock:
            if name in self._dbs:
                raise database_exists(name)
            identity, dimension = model or (self.model, self.dimension)
            seq, db = self._commit(CreateDatabase(name, dimension, identity, time.time(), storage, keep))
        self._wait(seq)
        return db

    def get(self, name: str, *, usable: bool = True) -> Database:
        check_stored_name(name)
        self._require_ready()
        db = self._dbs.get(name)
        if db is None:
            raise database_not_found(name)
        if usable:
            db.check_usable()
        return db

    def list(self) -> list[Database]:
        self._require_ready()
        with self._write_lock:
            return [self._dbs[n] for n in sorted(self._dbs)]

    def delete(self, name: str) -> None:
        check_stored_name(name)
        self._require_ready()
        with self._write_lock:
            self._get_locked(name)
            seq, _ = self._commit(DropDatabase(name))
        self._wait(seq)
        self.kept.free()

    # -- images ----------------------------------------------------------------------------
    def set_images(
        self,
        name: str,
        requests: list[SetRequest],
        vectors: np.ndarray,
        *,
        expect: object = None,
        should_continue: Callable[[], bool] | None = None,
        duplicates: list[DuplicateCheck | None] | None = None,
    ) -> list[SetResult | LookalikeError]:
        """Upsert images as one command.

        A request id seen before (per database) answers with its first result and changes
        nothing, so a client may retry a call whose answer it never got (``RetryPlan``).
        ``expect`` pins the database incarnation a stream started with. ``duplicates`` checks
        each item against the stored images first, under the write lock (``backends/duplicates.py``).
        """
        self._require_ready()
        with self._write_lock:
            db = self._get_locked(name)
            if expect is not None and db is not expect:
                raise database_replaced(name)
            db.check_usable()
            plan = RetryPlan.make(requests, self._window(name).seen)
            todo = plan.todo
            screened = screen(db, name, plan.requests, vectors, todo, duplicates) if any(duplicates or ()) else None
            if screened is not None:
                todo = screened.todo
            written: dict[int, SetResult] = {}
            seq = 0
            if todo and (should_continue is None or should_continue()):
                cmd = db.plan_set([plan.requests[k] for k in todo], vectors[todo], time.time())
                seq, replaced = self._commit(cmd)
                for k, item, rep in zip(todo, cmd.items, replaced, strict=True):
                    written[k] = SetResult((item.group_id, item.intra_id), rep)
            elif todo:
                raise write_cancelled()
            if screened is not None and duplicates is not None:
                screened.resolve(written, duplicates, name)
        if seq:
            self._wait(seq)
            self.kept.free()
        return plan.settle(written)

    def delete_image(self, name: str, group_id: str, intra_id: int) -> None:
        self._require_ready()
        with self._write_lock:
            db = self._get_locked(name)
            db.check_usable()
            db.require(group_id, intra_id)  # NOT_FOUND before anything is logged
            seq, _ = self._commit(DeleteImage(name, group_id, intra_id))
        self._wait(seq)
        self.kept.free()

    def delete_group(self, name: str, group_id: str) -> int:
        self._require_ready()
        with self._write_lock:
            db = self._get_locked(name)
            db.check_usable()
            db.require(group_id)
            seq, count = self._commit(DeleteGroup(name, group_id))
        self._wait(seq)
        self.kept.free()
        return count

    def clear(self, name: str) -> int:
        self._require_ready()
        with self._write_lock:
            self._get_locked(name).check_usable()
            seq, count = self._commit(ClearDatabase(name))
        self._wait(seq)
        self.kept.free()
        return count

    # -- import (snapshots and exports: checkpointing.py) ------------------------------------
    def import_(self, name: str, source: ExportedDatabase) -> Database:
        """A new database holding an export's rows (already read and checked by the service)."""
        check_stored_name(name)
        self._require_ready()
        with self._write_lock:
            if name in self._dbs:
                raise database_exists(name)
            cmd = CreateDatabase(name, source.dimension, source.model, source.create_time, source.storage, source.keep)
            seq, db = self._commit(cmd)
        for part in source.entries():  # a chunk per step: writers and searches go on between them
            with self._write_lock:
                if self._dbs.get(name) is not db:
                    raise database_replaced(name)
                items = tuple(SetItem(e.group_id, e.intra_id, db.next_image_id + i, "", e.attributes or None)
                              for i, e in enumerate(part))  # fmt: skip
                cmd = SetImages(name, items, np.stack([e.vector for e in part]), time.time(),
                                tuple(e.update_time for e in part))  # fmt: skip
                seq, _ = self._commit(cmd)
        self._wait(seq)
        return db

    def disk_bytes(self, name: str) -> int | None:
        """Bytes of a database's files at its last snapshot (None before its first, or in memory only)."""
        manifest = self.persistence.manifest if self.persistence is not None else None
        entry = (manifest or {}).get("databases", {}).get(name)
        return entry_bytes(entry) if entry is not None else None

    def kept_digests(self) -> set[str]:
        """Every kept-image digest a live row names (the reference counts' keys)."""
        return set(self.kept.live())

    def rename(self, moves: list[tuple[str, str]]) -> list[Database]:
        """Databases take new names in one logged step (a target held by a database not moving is dropped)."""
        self._require_ready()
        with self._write_lock:
            for src, dst in moves:
                check_stored_name(dst)
                self._get_locked(src)
            seq, moved = self._commit(RenameDatabases(tuple(moves)))
        self._wait(seq)
        self.kept.free()
        return moved

    def replace(self, name: str, loaded: str) -> Database:
        check_stored_name(name)
        self._require_ready()
        with self._write_lock:
            self._get_locked(loaded)
            seq, db = self._commit(ReplaceDatabase(name, loaded))
        self._wait(seq)
        self.kept.free()
        return db

    def close(self, *, snapshot: bool = True) -> None:
        graphs = [db.hnsw for db in list(self._dbs.values()) if db.hnsw is not None] + list(self._dropped_graphs)
        for graph in graphs:  # a graph loading or building is in native code: exiting under it aborts
            graph.wait_settled()
            graph.stop_building()
        if self.persistence is None:
            return
        if snapshot and self.ready.is_set():
            try:
                self.checkpoint()
            except LookalikeError as err:
                log.warning("final snapshot: %s", err.message)
        self.persistence.close()
