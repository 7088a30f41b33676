"""The Milvus index backend: databases as Milvus collections, so replicas can share them.

A replica keeps no state of its own beyond a connection and its leased intra_id blocks:
every call reads and writes Milvus at the configured consistency level (Strong by default:
a write acknowledged by any replica is seen by the next search on every replica). Start-up
reads the catalog collection only; nothing is scanned. Errors carry the same reasons as the
built-in store; when Milvus cannot be reached, calls fail with UNAVAILABLE /
MILVUS_UNAVAILABLE naming it, and work again as soon as it is back.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from lookalike.server import defaults
from lookalike.server.core.backends.api import (
    RETRY_WINDOW,
    DatabaseHandle,
    Entry,
    Key,
    RetryPlan,
    SetRequest,
    SetResult,
    SnapshotInfo,
    database_exists,
    database_not_found,
    database_replaced,
    group_not_found,
    intra_ids_exhausted,
    not_ready,
    write_cancelled,
)
from lookalike.server.core.backends.duplicates import DuplicateCheck, screen
from lookalike.server.core.backends.exports import ExportedDatabase, write_export_entries
from lookalike.server.core.backends.milvus.database import MilvusDatabase, unavailable
from lookalike.server.core.backends.milvus.intra_leases import IntraIdLeases
from lookalike.server.core.backends.milvus.requests import MilvusRequestWindow
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid
from lookalike.server.core.validation import LOAD_PREFIX, MAX_INTRA_ID, check_stored_name, kept_digests
from lookalike.server.storage.milvus_store import (
    ROW_FIELDS,
    MilvusRejected,
    MilvusStore,
    MilvusUnavailable,
    literal,
    row_key,
)

log = logging.getLogger(__name__)
INDEX_TYPES = defaults.MILVUS_INDEX_TYPES


@dataclass(frozen=True)
class MilvusIndexSettings:
    index_type: str = defaults.MILVUS_INDEX
    metric: str = defaults.MILVUS_METRIC
    connectivity: int = defaults.MILVUS_HNSW_M
    expansion_add: int = defaults.HNSW_EXPANSION_ADD
    expansion_search: int = defaults.HNSW_EXPANSION_SEARCH

    def build_params(self) -> dict[str, Any]:
        if self.index_type == "HNSW":
            return {"M": self.connectivity, "efConstruction": self.expansion_add}
        return {}

    def search_params(self, k: int) -> dict[str, Any]:
        return {"ef": max(self.expansion_search, k)} if self.index_type == "HNSW" else {}


class MilvusCatalog:
    """``IndexBackend`` on Milvus: one collection per database, a catalog collection for the names."""

    def __init__(
        self,
        dimension: int,
        model: dict[str, Any],
        store: MilvusStore,
        *,
        index: MilvusIndexSettings | None = None,
        lease_block: int = 64,
        retry_window: int = RETRY_WINDOW,
    ) -> None:
        self.dimension = dimension
        self.model = model
        self.loaded: list[tuple[dict[str, Any], int]] = [(model, dimension)]  # every model served; first = default
        self.store = store
        self.index = index or MilvusIndexSettings()
        self.leases = IntraIdLeases(store, lease_block)
        self.requests = MilvusRequestWindow(store, self.guard, retry_window)
        self.ready = threading.Event()
        self._closed = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="milvus")
        self.group_counts: dict[str, tuple[float, int]] = {}  # incarnation -> (when, distinct groups)

    @staticmethod
    def metric_of(info: dict[str, Any]) -> str:
        return str(info.get("milvus_metric", "IP"))

    def guard(self, fn: Callable[[], Any]) -> Any:
        """Run a Milvus call, translating its failures into the API's errors."""
        try:
            return fn()
        except MilvusUnavailable as exc:
            raise unavailable(exc) from None
        except MilvusRejected as exc:
            raise LookalikeError(ErrorKind.INTERNAL, "MILVUS_REJECTED", f"Milvus refused the call: {exc}") from None

    # -- start-up --------------------------------------------------------------------------
    def recover(self) -> None:
        """Wait for Milvus (retrying with backoff) and make sure the catalog collection exists."""
        delay = 0.5
        while not self._closed.is_set():
            try:
                self.store.ensure_catalog()
                names = [r["db"] for r in self.store.meta_rows('kind == "database"', ["db"])]
                log.info("index backend: %s, %d databases", self.store.description, len(names))
                for name in (n for n in names if n.startswith(LOAD_PREFIX)):  # another replica may be loading it
                    log.warning("%r is a load in progress, or one a replica left unfinished; it is not served", name)
                self.ready.set()
                return
            except MilvusUnavailable as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, 10.0)

    def _require_ready(self) -> None:
        if not self.ready.is_set():
            raise not_ready(
                "MILVUS_UNAVAILABLE",
                f"the server is waiting for its index backend ({self.store.description}); retry in a few seconds",
            )

    # -- databases -------------------------------------------------------------------------
    def _find(self, name: str) -> MilvusDatabase | None:
        rows = self.guard(lambda: self.store.meta_rows(f'kind == "database" and db == {literal(name)}', ["info"]))
        return MilvusDatabase(self, name, rows[0]["info"]) if rows else None

    def get(self, name: str, *, usable: bool = True) -> MilvusDatabase:
        check_stored_name(name)
        self._require_ready()
        db = self._find(name)
        if db is None:
            raise database_not_found(name)
        if usable:
            db.check_usable()
        return db

    def list(self) -> list[DatabaseHandle]:
        self._require_ready()
        rows = self.guard(lambda: self.store.meta_rows('kind == "database"', ["db", "info"]))
        return [MilvusDatabase(self, r["db"], r["info"]) for r in sorted(rows, key=lambda r: r["db"])]

    def serve_models(self, loaded: list[tuple[dict[str, Any], int]]) -> None:
        """The models this server runs (identity, dimension), the default first: databases of others are foreign."""
        self.loaded = list(loaded)
        self.model, self.dimension = loaded[0]

    def create(self, name: str, storage: str = "", keep: str = "none",
               model: tuple[dict[str, Any], int] | None = None, *,
               create_time: float | None = None) -> MilvusDatabase:  # fmt: skip
        check_stored_name(name)
        if storage not in ("", "f32"):
            raise invalid(
                "STORAGE_INVALID",
                f"storage {storage!r} is not available on the Milvus backend, which stores f32 vectors; "
                "leave storage empty (Milvus' own index type is chosen with --milvus-index)",
            )
        self._require_ready()
        if self._find(name) is not None:
            raise database_exists(name)
        identity, dimension = model or (self.model, self.dimension)
        info = {
            "dimension": dimension, "model": identity, "storage": "f32", "keep": keep,
            "create_time": time.time() if create_time is None else create_time,
            "incarnation": uuid.uuid4().hex, "index_type": self.index.index_type, "milvus_metric": self.index.metric,
            "collection": name,
        }  # fmt: skip
        self.guard(lambda: self.store.create_images(name, dimension, self.index.index_type,
                                                    self.index.build_params(), self.metric_of(info)))  # fmt: skip
        self.guard(lambda: self.store.put_meta([{"pk": f"database\x1f{name}", "kind": "database", "db": name,
                                                 "info": info}]))  # fmt: skip
        return MilvusDatabase(self, name, info)

    def _collection_shared(self, db: MilvusDatabase) -> bool:
        """Whether another database row names ``db``'s collection (a load interrupted after its swap)."""
        rows = self.guard(lambda: self.store.meta_rows('kind == "database"', ["db", "info"]))
        return any(r["db"] != db.name and str(r["info"].get("collection", r["db"])) == db.collection for r in rows)

    def delete(self, name: str) -> None:
        db = self.get(name, usable=False)
        shared = self._collection_shared(db)
        self.guard(lambda: self.store.delete_meta(f'kind == "database" and db == {literal(name)}'))
        if not shared:
            self.guard(lambda: self.store.drop_images(db.collection))
        self.requests.forget_all(db.incarnation)
        self.guard(lambda: self.leases.drop(db.incarnation))

    def replace(self, name: str, loaded: str) -> MilvusDatabase:
        """``loaded`` takes the name: one catalog upsert points ``name`` at its collection."""
        check_stored_name(name)
        source = self.get(loaded, usable=False)
        old = self._find(name)
        info = dict(source.info, collection=source.collection)
        self.guard(lambda: self.store.put_meta([{"pk": f"database\x1f{name}", "kind": "database", "db": name,
                                                 "info": info}]))  # fmt: skip
        self.guard(lambda: self.store.delete_meta(f'kind == "database" and db == {literal(loaded)}'))
        if old is not None and old.collection != source.collection:
            self.guard(lambda: self.store.drop_images(old.collection))
            self.requests.forget_all(old.incarnation)
            self.guard(lambda: self.leases.drop(old.incarnation))
        return MilvusDatabase(self, name, info)

    def disk_bytes(self, name: str) -> int | None:
        """Milvus keeps the segments: not known here."""
        return None

    def kept_digests(self) -> set[str]:
        """Every kept-image digest a row of any database names (a scan of every collection's attributes): what a
        sweep of the shared image store must keep. Replicas do not count references, so freeing is a sweep."""
        live: set[str] = set()
        for db in self.list():
            for batch in self.guard(lambda db=db: list(self.store.scan(db.collection, ["attributes"]))):
                for row in batch:
                    live.update(kept_digests(row.get("attributes") or {}))
        return live

    def rename(self, moves: list[tuple[str, str]]) -> list[MilvusDatabase]:
        """Databases take new names: one catalog upsert points each target name at its source's collection (a swap
        is one upsert); then the names left behind are removed and a replaced target's collection dropped."""
        sources = [self.get(src, usable=False) for src, _ in moves]
        for _, dst in moves:
            check_stored_name(dst)
        moving = {src for src, _ in moves}
        dropped = [old for _, dst in moves if dst not in moving and (old := self._find(dst)) is not None]
        rows = [
            {"pk": f"database\x1f{dst}", "kind": "database", "db": dst, "info": dict(db.info, collection=db.collection)}
            for db, (_, dst) in zip(sources, moves, strict=True)
        ]
        self.guard(lambda: self.store.put_meta(rows))
        for src in moving - {dst for _, dst in moves}:
            self.guard(lambda src=src: self.store.delete_meta(f'kind == "database" and db == {literal(src)}'))
        for old in dropped:
            self.guard(lambda old=old: self.store.drop_images(old.collection))
            self.requests.forget_all(old.incarnation)
            self.guard(lambda old=old: self.leases.drop(old.incarnation))
        return [MilvusDatabase(self, row["db"], row["info"]) for row in rows]

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
        """Upsert images keyed by (group_id, intra_id); a request id in the retry window answers
        with its first result (``RetryPlan``). ``duplicates`` checks each item against the stored
        images first; replicas do not serialise their writes, so two replicas writing one image at
        the same moment can both store it (one server alone cannot)."""
        db = self.get(name)
        if expect is not None and expect != db:
            raise database_replaced(name)
        plan = RetryPlan.make(requests, lambda ids: self.requests.seen(db.incarnation, ids))
        requests = plan.requests
        todo = plan.todo
        screened = screen(db, name, requests, vectors, todo, duplicates) if any(duplicates or ()) and todo else None
        if screened is not None:
            todo = screened.todo
        if not todo:
            written_none: dict[int, SetResult] = {}
            if screened is not None and duplicates is not None:
                screened.resolve(written_none, duplicates, name)
            return plan.settle(written_none)
        keys, existing = self._plan_keys(db, [requests[k] for k in todo])
        if should_continue is not None and not should_continue():
            raise write_cancelled()
        now = time.time()
        rows = []
        written: dict[int, SetResult] = {}
        for k, key in zip(todo, keys, strict=True):
            r = requests[k]
            rows.append({"pk": row_key(*key), "group_id": key[0], "intra_id": key[1], "update_time": now,
                         "request_id": r.request_id, "attributes": dict(r.attributes or {}),
                         "vector": vectors[k].astype(np.float32).tolist()})  # fmt: skip
            written[k] = SetResult(key, row_key(*key) in existing)
        self.guard(lambda: self.store.upsert(db.collection, rows))
        self.requests.remember(db.incarnation, [(requests[k].request_id, written[k], requests[k].fingerprint)
                                                for k in todo])  # fmt: skip
        self.group_counts.pop(db.incarnation, None)
        if screened is not None and duplicates is not None:
            screened.resolve(written, duplicates, name)
        return plan.settle(written)

    def _existing(self, collection: str, keys: list[Key]) -> set[str]:
        pks = sorted({row_key(*k) for k in keys})
        expr = "pk in [" + ", ".join(literal(p) for p in pks) + "]"
        return {r["pk"] for r in self.guard(lambda: self.store.query(collection, expr, ["pk"]))}

    def _plan_keys(self, db: MilvusDatabase, requests: list[SetRequest]) -> tuple[list[Key], set[str]]:
        """Explicit keys as given; automatic ones in request order from this replica's leased blocks.

        An automatic id that already names an image (set explicitly, maybe through another
        replica) or that an explicit item of this batch names is skipped for the next one.
        Returns the keys and those of them already stored (explicit keys: the upserts that
        replace), from one existence query for the whole batch (more only on a collision).
        """

        def fresh(group_id: str) -> Key:
            intra = self.guard(lambda: self.leases.take(db.incarnation, group_id, 1))[0]
            if intra >= MAX_INTRA_ID:
                raise intra_ids_exhausted(db.name, group_id)
            return (group_id, intra)

        keys: list[Key] = []
        auto: list[int] = []
        for k, (group_id, intra_id, *_) in enumerate(requests):
            if intra_id is not None:
                self.leases.saw_explicit(db.incarnation, group_id, intra_id)
                keys.append((group_id, intra_id))
            else:
                auto.append(k)
                keys.append(fresh(group_id))
        explicit = {row_key(*keys[k]) for k in range(len(keys)) if requests[k][1] is not None}
        stored = self._existing(db.collection, keys)
        replaced = stored & explicit
        while auto:
            auto = [k for k in auto if row_key(*keys[k]) in stored | explicit]
            for k in auto:
                keys[k] = fresh(keys[k][0])
            if auto:
                stored = self._existing(db.collection, [keys[k] for k in auto])
        return keys, replaced

    def delete_image(self, name: str, group_id: str, intra_id: int) -> None:
        db = self.get(name)
        db.get(group_id, intra_id)  # NOT_FOUND before anything is deleted
        self.guard(lambda: self.store.delete(db.collection, f"pk == {literal(row_key(group_id, intra_id))}"))
        self.requests.forget_key(db.incarnation, (group_id, intra_id))
        self.group_counts.pop(db.incarnation, None)

    def delete_group(self, name: str, group_id: str) -> int:
        db = self.get(name)
        expr = f"group_id == {literal(group_id)}"
        count = self.guard(lambda: self.store.count(db.collection, expr))
        if count == 0:
            raise group_not_found(name, group_id)
        self.guard(lambda: self.store.delete(db.collection, expr))
        self.requests.forget_group(db.incarnation, group_id)
        self.group_counts.pop(db.incarnation, None)
        return count

    def clear(self, name: str) -> int:
        db = self.get(name)
        count = self.guard(lambda: self.store.count(db.collection))
        self.guard(lambda: self.store.delete(db.collection, 'pk >= ""'))
        self.requests.forget_all(db.incarnation)
        self.group_counts.pop(db.incarnation, None)
        return count

    # -- snapshots, export, import ---------------------------------------------------------
    def checkpoint(self, *, push: bool = True) -> SnapshotInfo:
        """Milvus keeps its own log and segments; a snapshot here is a flush of every collection."""
        self._require_ready()
        total = 0
        for db in self.list():
            self.guard(lambda db=db: self.store.flush(db.collection))
            total += db.size
        return SnapshotInfo(time.time(), 0, total, 0)

    def snapshot_database(self, name: str) -> SnapshotInfo:
        db = self.get(name, usable=False)
        self.guard(lambda: self.store.flush(db.collection))
        return SnapshotInfo(time.time(), 0, db.size, 0)

    def export(self, name: str, location: str, oss: Any = None) -> SnapshotInfo:
        """The same export format as the built-in store, so databases move both ways."""
        db = self.get(name, usable=False)

        def rows() -> Iterator[list[Entry]]:  # a batch at a time: never all rows as Python objects
            for batch in self.store.scan(db.collection, [*ROW_FIELDS, "vector"]):
                yield [MilvusDatabase._entry(r) for r in batch]

        size_bytes, count = self.guard(lambda: write_export_entries(
            name, db.dimension, db.model, db.create_time, rows(), location, oss, db.keep))  # fmt: skip
        return SnapshotInfo(time.time(), size_bytes, count, 0)

    def import_(self, name: str, source: ExportedDatabase) -> MilvusDatabase:
        check_stored_name(name)
        self._require_ready()
        db = self.create(name, keep=source.keep, model=(source.model, source.dimension), create_time=source.create_time)
        for part in source.entries():
            rows = [{"pk": row_key(e.group_id, e.intra_id), "group_id": e.group_id, "intra_id": e.intra_id,
                     "update_time": e.update_time, "request_id": "", "attributes": dict(e.attributes),
                     "vector": e.vector.astype(np.float32).tolist()} for e in part]  # fmt: skip
            self.guard(lambda rows=rows: self.store.upsert(db.collection, rows))
        return db

    def close(self, *, snapshot: bool = True) -> None:
        self._closed.set()
        self.pool.shutdown(wait=False)
        self.store.close()
