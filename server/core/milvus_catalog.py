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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from lookalike.server.core.backend import (
    DatabaseHandle,
    SetRequest,
    SetResult,
    SnapshotInfo,
    database_exists,
    database_not_found,
    database_replaced,
    write_cancelled,
)
from lookalike.server.core.catalog import IMPORT_CHUNK, foreign_reason, read_export_for
from lookalike.server.core.commands import SetImages, SetItem
from lookalike.server.core.database import Database, Entry, Hit, Key
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid, not_found
from lookalike.server.core.intra_leases import IntraIdLeases
from lookalike.server.core.validation import check_database_name
from lookalike.server.storage.milvus_store import (
    ROW_FIELDS,
    MilvusRejected,
    MilvusStore,
    MilvusUnavailable,
    after_key,
    attribute_equals,
    group_prefix_range,
    literal,
    row_key,
)

log = logging.getLogger(__name__)
GROUP_COUNT_SCAN_LIMIT = 200_000  # above it GetDatabase reports group_count 0 (Milvus has no distinct count)
GROUP_COUNT_TTL_S = 5.0  # metrics scrapes and ListDatabases pages reuse a recent count instead of rescanning
INDEX_TYPES = ("FLAT", "HNSW", "AUTOINDEX")


@dataclass(frozen=True)
class MilvusIndexSettings:
    index_type: str = "HNSW"
    metric: str = "IP"  # vectors are unit length: IP and COSINE both rank by cosine; IP skips a normalisation
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 200

    def build_params(self) -> dict[str, Any]:
        if self.index_type == "HNSW":
            return {"M": self.connectivity, "efConstruction": self.expansion_add}
        return {}

    def search_params(self, k: int) -> dict[str, Any]:
        return {"ef": max(self.expansion_search, k)} if self.index_type == "HNSW" else {}


def unavailable(exc: MilvusUnavailable) -> LookalikeError:
    return LookalikeError(
        ErrorKind.UNAVAILABLE, "MILVUS_UNAVAILABLE",
        f"the index backend is down: {exc}; nothing of this call was applied unless it said so; retry when it is back",
    )  # fmt: skip


class MilvusDatabase:
    """A database as this replica last read it from the catalog collection."""

    metric = "cosine"

    def __init__(self, catalog: MilvusCatalog, name: str, info: dict[str, Any]) -> None:
        self._catalog = catalog
        self._store = catalog.store
        self.name = name
        self.info = info
        self.dimension = int(info["dimension"])
        self.model: dict[str, Any] = dict(info.get("model", {}))
        self.storage = str(info.get("storage", "f32"))
        self.create_time = float(info.get("create_time", 0.0))
        self.incarnation = str(info["incarnation"])
        self.index_type = str(info.get("index_type", "FLAT"))
        self.foreign = foreign_reason(name, self.model, self.dimension, catalog.model, catalog.dimension)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MilvusDatabase) and (other.name, other.incarnation) == (self.name, self.incarnation)

    def __hash__(self) -> int:
        return hash((self.name, self.incarnation))

    @property
    def size(self) -> int:
        return self._catalog.guard(lambda: self._store.count(self.name))

    @property
    def group_count(self) -> int:
        """Distinct groups by a scan of the group column (Milvus counts no distinct values), cached a while."""
        cached = self._catalog.group_counts.get(self.incarnation)
        if cached is not None and time.monotonic() - cached[0] < GROUP_COUNT_TTL_S:
            return cached[1]

        def count() -> int:
            if self._store.count(self.name) > GROUP_COUNT_SCAN_LIMIT:
                return 0
            return len({r["group_id"] for rows in self._store.scan(self.name, ["group_id"]) for r in rows})

        groups = int(self._catalog.guard(count))
        self._catalog.group_counts[self.incarnation] = (time.monotonic(), groups)
        return groups

    def check_usable(self) -> None:
        if self.foreign is not None:
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "MODEL_MISMATCH", self.foreign)

    @staticmethod
    def _entry(row: dict[str, Any]) -> Entry:
        return Entry(str(row["group_id"]), int(row["intra_id"]), float(row["update_time"]),
                     np.asarray(row["vector"], np.float32), dict(row.get("attributes") or {}))  # fmt: skip

    def get(self, group_id: str, intra_id: int) -> Entry:
        rows = self._catalog.guard(
            lambda: self._store.query(self.name, f"pk == {literal(row_key(group_id, intra_id))}",
                                      [*ROW_FIELDS, "vector"])  # fmt: skip
        )
        if not rows:
            raise not_found(
                "IMAGE_NOT_FOUND", f"database {self.name!r} has no image group_id={group_id!r} intra_id={intra_id}"
            )
        return self._entry(rows[0])

    def list(self, *, group_id: str | None, after: Key | None, limit: int) -> tuple[list[Entry], bool]:
        parts = []
        if group_id is not None:
            parts.append(f"group_id == {literal(group_id)}")
        if after is not None:
            parts.append(after_key(*after))
        expr = " and ".join(parts)
        rows = self._catalog.guard(lambda: self._store.page(self.name, expr, [*ROW_FIELDS, "vector"], limit + 1))
        return [self._entry(r) for r in rows[:limit]], len(rows) > limit

    def search_tier(
        self,
        query: np.ndarray,
        top_k: int,
        *,
        one_per_group: bool = False,
        min_score: float | None = None,
        exclude: Key | None = None,
        where: dict[str, str] | None = None,
        group_prefix: str = "",
        with_attributes: bool = True,
    ) -> tuple[list[Hit], int, str]:
        """Top-k by inner product of unit vectors (cosine) in Milvus; one per group by its grouping search."""
        parts = []
        if where:
            parts.append(attribute_equals(where))
        if group_prefix:
            parts.append(group_prefix_range(group_prefix))
        filtered = " and ".join(parts)
        expr = filtered
        if exclude is not None:
            expr = " and ".join(p for p in (filtered, f"pk != {literal(row_key(*exclude))}") if p)
        fields = ["group_id", "intra_id", *(["attributes"] if with_attributes else [])]
        settings = self._catalog.index

        def run() -> tuple[list[dict[str, Any]], int]:
            counting = self._catalog.pool.submit(self._store.count, self.name, expr)  # alongside, not before
            found = self._store.search(self.name, query, top_k, expr, fields,
                                       group_by="group_id" if one_per_group else None,
                                       params=settings.search_params(top_k),
                                       metric=self._catalog.metric_of(self.info))  # fmt: skip
            return found, counting.result()

        found, searched = self._catalog.guard(run)
        hits = []
        for r in sorted(found, key=lambda r: (-float(r["distance"]), r["entity"]["group_id"], r["entity"]["intra_id"])):
            score = float(np.clip(r["distance"], -1.0, 1.0))
            if min_score is not None and score < min_score:
                break
            e = r["entity"]
            attrs = (e.get("attributes") or None) if with_attributes else None
            hits.append(Hit(str(e["group_id"]), int(e["intra_id"]), score, dict(attrs) if attrs else None))
        return hits, searched, f"milvus-{self.index_type.lower()}"


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
    ) -> None:
        self.dimension = dimension
        self.model = model
        self.store = store
        self.index = index or MilvusIndexSettings()
        self.leases = IntraIdLeases(store, lease_block)
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
                self.ready.set()
                return
            except MilvusUnavailable as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, 10.0)

    def _require_ready(self) -> None:
        if not self.ready.is_set():
            raise LookalikeError(
                ErrorKind.UNAVAILABLE, "MILVUS_UNAVAILABLE",
                f"the server is waiting for its index backend ({self.store.description}); retry in a few seconds",
            )  # fmt: skip

    # -- databases -------------------------------------------------------------------------
    def _find(self, name: str) -> MilvusDatabase | None:
        rows = self.guard(lambda: self.store.meta_rows(f'kind == "database" and db == {literal(name)}', ["info"]))
        return MilvusDatabase(self, name, rows[0]["info"]) if rows else None

    def get(self, name: str, *, usable: bool = True) -> MilvusDatabase:
        check_database_name(name)
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

    def create(self, name: str, storage: str = "", *, create_time: float | None = None) -> MilvusDatabase:
        check_database_name(name)
        if storage not in ("", "f32"):
            raise invalid(
                "STORAGE_INVALID",
                f"storage {storage!r} is not available on the Milvus backend, which stores f32 vectors; "
                "leave storage empty (Milvus' own index type is chosen with --milvus-index)",
            )
        self._require_ready()
        if self._find(name) is not None:
            raise database_exists(name)
        info = {
            "dimension": self.dimension, "model": self.model, "storage": "f32",
            "create_time": time.time() if create_time is None else create_time,
            "incarnation": uuid.uuid4().hex, "index_type": self.index.index_type, "milvus_metric": self.index.metric,
        }  # fmt: skip
        self.guard(lambda: self.store.create_images(name, self.dimension, self.index.index_type,
                                                    self.index.build_params(), self.metric_of(info)))  # fmt: skip
        self.guard(lambda: self.store.put_meta([{"pk": f"database\x1f{name}", "kind": "database", "db": name,
                                                 "info": info}]))  # fmt: skip
        return MilvusDatabase(self, name, info)

    def delete(self, name: str) -> None:
        db = self.get(name, usable=False)
        self.guard(lambda: self.store.delete_meta(f'kind == "database" and db == {literal(name)}'))
        self.guard(lambda: self.store.drop_images(name))
        self.guard(lambda: self.leases.drop(db.incarnation))

    # -- images ----------------------------------------------------------------------------
    def set_images(
        self,
        name: str,
        requests: list[SetRequest],
        vectors: np.ndarray,
        *,
        expect: object = None,
        should_continue: Callable[[], bool] | None = None,
    ) -> list[SetResult]:
        """Upsert images keyed by (group_id, intra_id); a request id already stored returns its key."""
        db = self.get(name)
        if expect is not None and expect != db:
            raise database_replaced(name)
        results: list[SetResult | None] = [None] * len(requests)
        ids = [r[2] for r in requests if r[2]]
        if ids:
            expr = "request_id in [" + ", ".join(literal(i) for i in ids) + "]"
            seen = {r["request_id"]: r for r in self.guard(lambda: self.store.query(name, expr, ROW_FIELDS))}
            for k, (_, _, request_id, _) in enumerate(requests):
                if request_id in seen:
                    row = seen[request_id]
                    results[k] = SetResult((str(row["group_id"]), int(row["intra_id"])), False)
        todo = [k for k in range(len(requests)) if results[k] is None]
        if not todo:
            return [r for r in results if r is not None]
        keys, existing = self._plan_keys(db, [requests[k] for k in todo])
        if should_continue is not None and not should_continue():
            raise write_cancelled()
        now = time.time()
        rows = []
        for k, key in zip(todo, keys, strict=True):
            group_id, _, request_id, attributes = requests[k]
            rows.append({"pk": row_key(*key), "group_id": key[0], "intra_id": key[1], "update_time": now,
                         "request_id": request_id, "attributes": dict(attributes or {}),
                         "vector": vectors[k].astype(np.float32).tolist()})  # fmt: skip
            results[k] = SetResult(key, row_key(*key) in existing)
        self.guard(lambda: self.store.upsert(name, rows))
        self.group_counts.pop(db.incarnation, None)
        return [r for r in results if r is not None]

    def _existing(self, name: str, keys: list[Key]) -> set[str]:
        pks = sorted({row_key(*k) for k in keys})
        expr = "pk in [" + ", ".join(literal(p) for p in pks) + "]"
        return {r["pk"] for r in self.guard(lambda: self.store.query(name, expr, ["pk"]))}

    def _plan_keys(self, db: MilvusDatabase, requests: list[SetRequest]) -> tuple[list[Key], set[str]]:
        """Explicit keys as given; automatic ones in request order from this replica's leased blocks.

        An automatic id that already names an image (set explicitly, maybe through another
        replica) or that an explicit item of this batch names is skipped for the next one.
        Returns the keys and those of them already stored (explicit keys: the upserts that
        replace), from one existence query for the whole batch (more only on a collision).
        """

        def fresh(group_id: str) -> Key:
            return (group_id, self.guard(lambda: self.leases.take(db.incarnation, group_id, 1))[0])

        keys: list[Key] = []
        auto: list[int] = []
        for k, (group_id, intra_id, _, _) in enumerate(requests):
            if intra_id is not None:
                self.leases.saw_explicit(db.incarnation, group_id, intra_id)
                keys.append((group_id, intra_id))
            else:
                auto.append(k)
                keys.append(fresh(group_id))
        explicit = {row_key(*keys[k]) for k in range(len(keys)) if requests[k][1] is not None}
        stored = self._existing(db.name, keys)
        replaced = stored & explicit
        while auto:
            auto = [k for k in auto if row_key(*keys[k]) in stored | explicit]
            for k in auto:
                keys[k] = fresh(keys[k][0])
            if auto:
                stored = self._existing(db.name, [keys[k] for k in auto])
        return keys, replaced

    def delete_image(self, name: str, group_id: str, intra_id: int) -> None:
        db = self.get(name)
        db.get(group_id, intra_id)  # NOT_FOUND before anything is deleted
        self.guard(lambda: self.store.delete(name, f"pk == {literal(row_key(group_id, intra_id))}"))
        self.group_counts.pop(db.incarnation, None)

    def delete_group(self, name: str, group_id: str) -> int:
        db = self.get(name)
        expr = f"group_id == {literal(group_id)}"
        count = self.guard(lambda: self.store.count(name, expr))
        if count == 0:
            raise not_found("GROUP_NOT_FOUND", f"database {name!r} has no group {group_id!r}")
        self.guard(lambda: self.store.delete(name, expr))
        self.group_counts.pop(db.incarnation, None)
        return count

    def clear(self, name: str) -> int:
        db = self.get(name)
        count = self.guard(lambda: self.store.count(name))
        self.guard(lambda: self.store.delete(name, 'pk >= ""'))
        self.group_counts.pop(db.incarnation, None)
        return count

    # -- snapshots, export, import ---------------------------------------------------------
    def checkpoint(self, *, push: bool = True) -> SnapshotInfo:
        """Milvus keeps its own log and segments; a snapshot here is a flush of every collection."""
        self._require_ready()
        total = 0
        for db in self.list():
            self.guard(lambda db=db: self.store.flush(db.name))
            total += db.size
        return SnapshotInfo(time.time(), 0, total, 0)

    def snapshot_database(self, name: str) -> SnapshotInfo:
        db = self.get(name, usable=False)
        self.guard(lambda: self.store.flush(name))
        return SnapshotInfo(time.time(), 0, db.size, 0)

    def export(self, name: str, location: str, oss: Any = None) -> SnapshotInfo:
        """The same export format as the built-in store, so databases move both ways."""
        from lookalike.server.core.persistence import entry_bytes, write_export

        db = self.get(name, usable=False)
        copy = Database(name, db.dimension, model=db.model, create_time=db.create_time)

        def fill() -> None:  # a batch at a time: the rows are never all held as Python objects
            for seq, rows in enumerate(self.store.scan(name, [*ROW_FIELDS, "vector"]), 1):
                items = tuple(SetItem(r["group_id"], int(r["intra_id"]), copy.next_image_id + i, "",
                                      dict(r.get("attributes") or {}) or None) for i, r in enumerate(rows))  # fmt: skip
                vectors = np.asarray([r["vector"] for r in rows], np.float32)
                copy.apply_set(SetImages(name, items, vectors, time.time(),
                                         tuple(float(r["update_time"]) for r in rows)), seq)  # fmt: skip

        self.guard(fill)
        copy.incarnation = 1
        try:
            entry = write_export(copy.snapshot_view(), location, oss)
        except (OSError, ValueError) as exc:
            raise LookalikeError(
                ErrorKind.UNAVAILABLE, "EXPORT_FAILED", f"could not write the export to {location}: {exc}"
            ) from None
        return SnapshotInfo(time.time(), entry_bytes(entry), copy.size, 0)

    def import_(self, name: str, location: str, oss: Any = None) -> MilvusDatabase:
        check_database_name(name)
        self._require_ready()
        source = read_export_for(location, oss, self.model, self.dimension)
        db = self.create(name, create_time=source.create_time)
        entries, _ = source.list(group_id=None, after=None, limit=source.size)
        for start in range(0, len(entries), IMPORT_CHUNK):
            part = entries[start : start + IMPORT_CHUNK]
            rows = [{"pk": row_key(e.group_id, e.intra_id), "group_id": e.group_id, "intra_id": e.intra_id,
                     "update_time": e.update_time, "request_id": "", "attributes": dict(e.attributes),
                     "vector": e.vector.astype(np.float32).tolist()} for e in part]  # fmt: skip
            self.guard(lambda rows=rows: self.store.upsert(name, rows))
        return db

    def close(self, *, snapshot: bool = True) -> None:
        self._closed.set()
        self.pool.shutdown(wait=False)
        self.store.close()
