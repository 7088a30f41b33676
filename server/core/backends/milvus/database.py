"""One Milvus-backed database as a replica last read it from the catalog collection: sizes, lookups, search."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from lookalike.server.core.backends.api import (
    Entry,
    Hit,
    Key,
    check_usable,
    foreign_among,
    image_not_found,
)
from lookalike.server.core.errors import ErrorKind, LookalikeError

if TYPE_CHECKING:
    from lookalike.server.core.backends.milvus.catalog import MilvusCatalog
from lookalike.server.storage.milvus_store import (
    ROW_FIELDS,
    MilvusUnavailable,
    after_key,
    attribute_equals,
    group_prefix_range,
    literal,
    row_key,
)

GROUP_COUNT_SCAN_LIMIT = 200_000  # above it GetDatabase reports group_count 0 (Milvus has no distinct count)
GROUP_COUNT_TTL_S = 5.0  # metrics scrapes and ListDatabases pages reuse a recent count instead of rescanning


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
        self.keep = str(info.get("keep", "none"))  # kept blobs live in the shared image store (core/keeping.py)
        self.create_time = float(info.get("create_time", 0.0))
        self.incarnation = str(info["incarnation"])
        self.index_type = str(info.get("index_type", "FLAT"))
        self.collection = str(info.get("collection", name))  # a load's collection keeps its own id after the swap
        self.foreign = foreign_among(name, self.model, self.dimension, catalog.loaded)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MilvusDatabase) and (other.name, other.incarnation) == (self.name, self.incarnation)

    def __hash__(self) -> int:
        return hash((self.name, self.incarnation))

    @property
    def size(self) -> int:
        return self._catalog.guard(lambda: self._store.count(self.collection))

    @property
    def group_count(self) -> int:
        """Distinct groups by a scan of the group column (Milvus counts no distinct values), cached a while."""
        cached = self._catalog.group_counts.get(self.incarnation)
        if cached is not None and time.monotonic() - cached[0] < GROUP_COUNT_TTL_S:
            return cached[1]

        def count() -> int:
            if self._store.count(self.collection) > GROUP_COUNT_SCAN_LIMIT:
                return 0
            return len({r["group_id"] for rows in self._store.scan(self.collection, ["group_id"]) for r in rows})

        groups = int(self._catalog.guard(count))
        self._catalog.group_counts[self.incarnation] = (time.monotonic(), groups)
        return groups

    def check_usable(self) -> None:
        check_usable(self.foreign)

    @staticmethod
    def _entry(row: dict[str, Any]) -> Entry:
        return Entry(str(row["group_id"]), int(row["intra_id"]), float(row["update_time"]),
                     np.asarray(row["vector"], np.float32), dict(row.get("attributes") or {}))  # fmt: skip

    def get(self, group_id: str, intra_id: int) -> Entry:
        rows = self._catalog.guard(
            lambda: self._store.query(
                self.collection, f"pk == {literal(row_key(group_id, intra_id))}", [*ROW_FIELDS, "vector"]
            )  # fmt: skip
        )
        if not rows:
            raise image_not_found(self.name, group_id, intra_id)
        return self._entry(rows[0])

    def list(self, *, group_id: str | None, after: Key | None, limit: int) -> tuple[list[Entry], bool]:
        parts = []
        if group_id is not None:
            parts.append(f"group_id == {literal(group_id)}")
        if after is not None:
            parts.append(after_key(*after))
        expr = " and ".join(parts)
        rows = self._catalog.guard(lambda: self._store.page(self.collection, expr, [*ROW_FIELDS, "vector"], limit + 1))
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
            counting = self._catalog.pool.submit(self._store.count, self.collection, expr)  # alongside, not before
            found = self._store.search(self.collection, query, top_k, expr, fields,
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
