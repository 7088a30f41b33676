"""A database's consistent picture for snapshots and exports, and a database rebuilt from one.

A mixin of ``Database``; the files themselves are written and read by ``snapshot_files.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from lookalike.server.core.backends.builtin.chunks import ChunkedRows
from lookalike.server.core.backends.builtin.hnsw import HnswIndex
from lookalike.server.core.backends.builtin.index import Pinned
from lookalike.server.core.backends.builtin.records import Members, grown

if TYPE_CHECKING:
    from lookalike.server.core.backends.builtin.database import Database


@dataclass
class SnapshotView:
    """A consistent picture of a database for a snapshot; rows below ``n`` never change."""

    n: int
    live: np.ndarray
    per_row: dict[str, list[np.ndarray]]
    vectors: list[np.ndarray]
    meta: dict[str, Any]
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    full: list[np.ndarray] | None = None  # i8: the float32 copy's chunks
    graph: HnswIndex | None = None  # a ready HNSW graph (or one loading: saved once in), beside the rows
    on_saved: Any = None  # called with the float32 copy's saved chunks (memory maps) to drop in-memory ones


class DatabaseSnapshots:
    """``snapshot_view`` (what a checkpoint writes) and ``from_snapshot`` (what start-up reads)."""

    def snapshot_view(self) -> SnapshotView:
        """Waits for start-up's deferred checks first (``require_checked``)."""
        self.require_checked()
        with self.lock:
            n = self._intra.n
            chunk_rows = self._intra.chunk_rows
            pinned = self.index.pin()
            per_row = {
                "ids": _slices(self._ids_flat, n, chunk_rows),
                "group": _slices(self._group_flat, n, chunk_rows),
                "intra": self._intra.views(n),
                "time": self._time.views(n),
            }
            if pinned.scales is not None:
                per_row["scale"] = pinned.scales.views(n)
            layout = (self.incarnation, self.layout)

            def on_saved(full: list[np.ndarray]) -> None:
                """Full float32 chunks now on disk: serve them memory-mapped, freeing the in-memory copies."""
                with self.lock:
                    p = self.index.pin()
                    if p.full is None or (self.incarnation, self.layout) != layout:
                        return
                    for i, mapped in enumerate(full):
                        if i < len(p.full.chunks) and len(mapped) == p.full.chunk_rows:
                            p.full.chunks[i] = mapped

            graph = self.hnsw if self.hnsw is not None and (self.hnsw.ready or self.hnsw.settling) else None
            return SnapshotView(
                n=n,
                live=self._live[:n].copy(),
                per_row=per_row,
                full=pinned.full.views(n) if pinned.full is not None else None,
                graph=graph,
                on_saved=on_saved if pinned.full is not None else None,
                vectors=pinned.vectors.views(n),
                attributes={str(row): dict(a) for row, a in self._attrs.items()},
                meta={
                    "name": self.name,
                    "dimension": self.dimension,
                    "metric": self.metric,
                    "model": self.model,
                    "create_time": self.create_time,
                    "chunk_rows": chunk_rows,
                    "storage": self.storage,
                    "keep": self.keep,
                    "next_image_id": self.next_image_id,
                    "applied_seq": self.applied_seq,
                    "incarnation": self.incarnation,
                    "layout": self.layout,
                    "size": self._size,
                    "group_names": list(self._groups.names),
                    "group_next": list(self._groups.next_intra),
                },
            )

    @classmethod
    def from_snapshot(
        cls,
        meta: dict[str, Any],
        live: np.ndarray,
        per_row: dict[str, list[np.ndarray]],
        vectors: list[np.ndarray],
        attributes: dict[str, dict[str, str]] | None = None,
        full: list[np.ndarray] | None = None,
        graph: HnswIndex | None = None,
    ) -> Database:
        chunk_rows = int(meta["chunk_rows"])
        db = cls(
            meta["name"], int(meta["dimension"]), model=meta["model"], create_time=float(meta["create_time"]),
            chunk_rows=chunk_rows, storage=meta.get("storage", "f32"), keep=meta.get("keep", "none"),
        )  # fmt: skip
        n = len(live)
        d = db.dimension
        p = db.index.pin()
        quantized = p.scales is not None
        db.index.pinned = Pinned(
            ChunkedRows.from_chunks(vectors, n, p.vectors.dtype, d, chunk_rows),
            ChunkedRows.from_chunks(per_row["scale"], n, np.float32, None, chunk_rows) if quantized else None,
            ChunkedRows.from_chunks(full or [], n, np.float32, d, chunk_rows) if quantized else None,
        )
        db.hnsw = graph
        db._intra = ChunkedRows.from_chunks(per_row["intra"], n, np.int64, None, chunk_rows)
        db._time = ChunkedRows.from_chunks(per_row["time"], n, np.float64, None, chunk_rows)
        db._live = grown(db._live, 0, n)
        db._live[:n] = live
        db._ids_flat = np.zeros(len(db._live), np.int64)
        db._group_flat = np.zeros(len(db._live), np.int32)
        if n:
            db._ids_flat[:n] = np.concatenate(per_row["ids"])[:n]
            db._group_flat[:n] = np.concatenate(per_row["group"])[:n]
        db._groups.names = list(meta["group_names"])
        db._groups.number = {name: i for i, name in enumerate(db._groups.names)}
        db._groups.next_intra = [int(x) for x in meta["group_next"]]
        rows = np.flatnonzero(live)
        if len(rows):
            groups = db._group_flat[rows]
            intras = db._intra.take(rows)
            db._groups.members = Members.from_rows(groups, intras, rows)
        db._size = len(rows)
        db._attrs = {int(row): dict(a) for row, a in (attributes or {}).items()}
        db.next_image_id = int(meta["next_image_id"])
        db.applied_seq = db.snapshot_seq = int(meta["applied_seq"])
        db.incarnation = int(meta["incarnation"])
        db.layout = int(meta.get("layout", 0))
        return db


def _slices(array: np.ndarray, n: int, chunk_rows: int) -> list[np.ndarray]:
    """The first ``n`` entries as snapshot chunks (views)."""
    return [array[i : min(n, i + chunk_rows)] for i in range(0, n, chunk_rows)]
