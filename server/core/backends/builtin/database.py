"""One database: a record store (stable ids, keys, timestamps, live flags) and an ``Index``.

Each stored vector gets a row in fixed-size chunks and a stable internal id; an upsert or
delete clears the old row's live flag, so a search in progress never sees a half-written
vector and a finished delete is never returned again. Nothing outside this file uses row
numbers as identity. Mutations arrive only as commands (``commands.py``), already logged.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from lookalike.server.core.backends.api import (
    Entry,
    Key,
    SetRequest,
    check_usable,
    group_not_found,
    image_not_found,
    intra_ids_exhausted,
    snapshot_damaged,
)
from lookalike.server.core.backends.builtin.chunks import CHUNK_ROWS, ChunkedRows
from lookalike.server.core.backends.builtin.commands import SetImages, SetItem
from lookalike.server.core.backends.builtin.filters import FilterIndex
from lookalike.server.core.backends.builtin.hnsw import HnswIndex, HnswSettings
from lookalike.server.core.backends.builtin.index import ExactIndex
from lookalike.server.core.backends.builtin.key_order import KeyOrder
from lookalike.server.core.backends.builtin.records import Groups, grown
from lookalike.server.core.backends.builtin.search import DatabaseSearch
from lookalike.server.core.backends.builtin.self_join import DatabaseJoin
from lookalike.server.core.backends.builtin.snapshot import DatabaseSnapshots, SnapshotView
from lookalike.server.core.validation import MAX_INTRA_ID, kept_digests

__all__ = ["Database", "SnapshotView"]


class Database(DatabaseSearch, DatabaseSnapshots, DatabaseJoin):
    def __init__(
        self,
        name: str,
        dimension: int,
        *,
        model: dict[str, Any] | None = None,
        create_time: float = 0.0,
        chunk_rows: int = CHUNK_ROWS,
        storage: str = "f32",
        keep: str = "none",
    ) -> None:
        self.name = name
        self.storage = storage
        self.keep = keep  # what it keeps of each image it registers (core/keeping.py)
        self.dimension = dimension
        self.metric = "cosine"
        self.model = model or {}
        self.create_time = create_time
        self.foreign: str | None = None  # why this server must not serve it (another model), else None
        # Snapshot files start-up mapped unverified (``snapshot_files.check_deferred``): (ref, array, path);
        # ``checked`` is set once they are verified, ``damaged`` says why they failed
        self.unchecked: list[tuple[Any, np.ndarray, str]] = []
        self.checked = threading.Event()
        self.checked.set()
        self.damaged: str | None = None
        self.lock = threading.Lock()
        self.index = ExactIndex(dimension, chunk_rows=chunk_rows, storage=storage)
        self._intra = ChunkedRows(np.int64, None, chunk_rows)
        self._time = ChunkedRows(np.float64, None, chunk_rows)
        self._live = np.zeros(0, np.uint8)
        self._attrs: dict[int, dict[str, str]] = {}  # row -> attributes, for live rows that have any
        self.released: list[str] = []  # kept-image digests of rows retired since the catalog last took them
        self._filters = FilterIndex()  # attribute key -> value code by row, for keys searches filter on
        # Small per-row columns, contiguous (the kernel and bisections want one array; growth is cheap):
        self._ids_flat = np.zeros(0, np.int64)  # image id by row, ascending, so id -> row is a bisection
        self._group_flat = np.zeros(0, np.int32)  # group number by row (one-per-group scans read it as is)
        self._hnsw_settings: HnswSettings | None = None
        self.hnsw: HnswIndex | None = None
        self._groups = Groups()
        self._size = 0
        self.next_image_id = 0
        self.incarnation = 0  # sequence number of the command that created it (names its files)
        self.layout = 0  # bumped by each compaction: rows moved, so snapshot files are never reused across it
        self.applied_seq = 0  # last log record applied
        self.snapshot_seq = -1  # applied_seq at the last snapshot
        self._order: KeyOrder | None = None  # live group names, sorted: built when first listed, then kept

    @property
    def hnsw_settings(self) -> HnswSettings | None:
        return self._hnsw_settings

    @hnsw_settings.setter
    def hnsw_settings(self, settings: HnswSettings | None) -> None:
        """The server's HNSW settings; a graph loaded from a snapshot takes their search-time part."""
        self._hnsw_settings = settings
        if self.hnsw is not None and settings is not None:
            self.hnsw.configure(settings)

    # -- reads -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def group_count(self) -> int:
        return self._groups.members.groups

    @property
    def rows(self) -> int:
        return self._intra.n

    def check_usable(self) -> None:
        check_usable(self.foreign)
        if self.damaged is not None:
            raise snapshot_damaged(self.name, self.damaged)

    def require_checked(self) -> None:
        """Wait for start-up's deferred file checks, refusing a damaged database: what copies its rows into new
        files (a snapshot, a compaction) would give an unverified file's rows new checksums and hide damage."""
        self.checked.wait()
        if self.damaged is not None:
            raise snapshot_damaged(self.name, self.damaged)

    def _row(self, group_id: str, intra_id: int) -> int:
        g = self._groups.number.get(group_id)
        row = self._groups.members.get(g, intra_id) if g is not None else None
        if row is None:
            raise image_not_found(self.name, group_id, intra_id)
        return row

    def _entry(self, row: int) -> Entry:
        return Entry(
            self._groups.names[int(self._group_flat[row])],
            int(self._intra[row]),
            float(self._time[row]),
            self.index.vector(row),
            dict(self._attrs.get(row, {})),
        )

    def get(self, group_id: str, intra_id: int) -> Entry:
        with self.lock:
            return self._entry(self._row(group_id, intra_id))

    def require(self, group_id: str, intra_id: int | None = None) -> None:
        """NOT_FOUND unless the image (or, without ``intra_id``, the group) exists; copies nothing."""
        with self.lock:
            if intra_id is not None:
                self._row(group_id, intra_id)
            elif not self._groups.members.count(self._groups.number.get(group_id, -1)):
                raise group_not_found(self.name, group_id)

    def list(self, *, group_id: str | None, after: Key | None, limit: int) -> tuple[list[Entry], bool]:
        """Entries ordered by key, strictly after ``after``; returns (page, more_left). Costs the page (and
        a sort of the group names the first time), whatever was written before (``key_order.py``)."""
        with self.lock:
            if self._order is None:
                self._order = KeyOrder.of(self._groups)
            page, more = self._order.page(self._groups, group_id, after, limit)
            return [self._entry(row) for _, _, row in page], more

    # -- planning (under the catalog's write lock, before logging) ---------------------------
    def plan_set(self, requests: list[SetRequest], vectors: np.ndarray, now: float) -> SetImages:
        """Choose intra ids (next in group when None) and internal ids for a set command."""
        pending: dict[str, int] = {}  # group -> next intra_id after the items planned so far
        items = []
        with self.lock:
            for k, (group_id, intra_id, request_id, attributes, fingerprint) in enumerate(requests):
                if group_id not in pending:
                    g = self._groups.number.get(group_id)
                    has = g is not None and self._groups.members.count(g) > 0
                    pending[group_id] = self._groups.next_intra[g] if has else 0
                if intra_id is None:
                    intra_id = pending[group_id]
                    if intra_id >= MAX_INTRA_ID:
                        raise intra_ids_exhausted(self.name, group_id)
                pending[group_id] = max(pending[group_id], intra_id + 1)
                items.append(SetItem(group_id, intra_id, self.next_image_id + k, request_id, attributes or None,
                                     fingerprint))  # fmt: skip
        return SetImages(self.name, tuple(items), vectors, now)

    # -- kept images ------------------------------------------------------------------------
    def _release(self, row: int) -> None:
        """Drop a retired row's attributes, noting the kept blobs it referenced."""
        attributes = self._attrs.pop(row, None)
        if attributes:
            self.released.extend(kept_digests(attributes))

    def kept_digests(self) -> list[str]:
        """Every kept-image digest its live rows reference (one per reference)."""
        with self.lock:
            return [d for a in self._attrs.values() for d in kept_digests(a)]

    # -- applying (commands already logged) --------------------------------------------------
    def apply_set(self, cmd: SetImages, seq: int) -> list[bool]:
        """Append the rows, retire the rows they replace; returns ``replaced`` per item."""
        n = len(cmd.items)
        with self.lock:
            first = self._intra.n
            groups = np.array([self._groups.get_or_add(i.group_id) for i in cmd.items], np.int32)
            self.index.add(cmd.vectors)
            self._intra.append(np.array([i.intra_id for i in cmd.items], np.int64))
            self._time.append(np.asarray(cmd.times, np.float64) if cmd.times else np.full(n, cmd.time, np.float64))
            live = grown(self._live, len(self._live), first + n)
            new_ids = np.array([i.image_id for i in cmd.items], np.int64)
            self._ids_flat = grown(self._ids_flat, first, first + n)
            self._ids_flat[first : first + n] = new_ids
            self._group_flat = grown(self._group_flat, first, first + n)
            self._group_flat[first : first + n] = groups
            retired: list[int] = []
            replaced = []
            fresh = [] if self._order is None else self._groups.members.empty(groups)  # get their first image
            for k, item in enumerate(cmd.items):
                g = int(groups[k])
                old = self._groups.members.set(g, item.intra_id, first + k)
                if old is not None:
                    live[old] = 0
                    self._release(old)
                    retired.append(int(self._ids_flat[old]))
                else:
                    self._size += 1
                if item.attributes:
                    self._attrs[first + k] = dict(item.attributes)
                live[first + k] = 1
                self._groups.next_intra[g] = max(self._groups.next_intra[g], item.intra_id + 1)
                replaced.append(old is not None)
            self._live = live
            self._filters.appended(first, [item.attributes for item in cmd.items])
            self.next_image_id = max(self.next_image_id, max(i.image_id for i in cmd.items) + 1)
            if self._order is not None and fresh:
                self._order.add([self._groups.names[g] for g in fresh])
            self.applied_seq = seq
            if self.hnsw is not None:
                self.hnsw.remove(retired)
                self.hnsw.add(new_ids, cmd.vectors, seq)
            else:
                self._maybe_build_graph()
            return replaced

    def apply_delete(self, group_id: str, intra_id: int, seq: int) -> None:
        with self.lock:
            row = self._row(group_id, intra_id)
            g = self._groups.number[group_id]
            live = self._live.copy()  # searches hold the old mask; never change it under them
            live[row] = 0
            self._live = live
            self._release(row)
            if self.hnsw is not None:
                self.hnsw.remove([int(self._ids_flat[row])], seq)
            self._groups.members.remove(g, intra_id)
            if not self._groups.members.count(g):
                self._groups.next_intra[g] = 0
                if self._order is not None:
                    self._order.discard(group_id)
            self._size -= 1
            self.applied_seq = seq

    def apply_delete_group(self, group_id: str, seq: int) -> int:
        with self.lock:
            g = self._groups.number.get(group_id)
            members = self._groups.members.group(g) if g is not None else None
            if not members:
                raise group_not_found(self.name, group_id)
            for intra in members:
                self._groups.members.remove(g, intra)
            live = self._live.copy()
            live[list(members.values())] = 0
            self._live = live
            for row in members.values():
                self._release(row)
            if self.hnsw is not None:
                self.hnsw.remove([int(self._ids_flat[r]) for r in members.values()], seq)
            self._groups.next_intra[g] = 0
            self._size -= len(members)
            if self._order is not None:
                self._order.discard(group_id)
            self.applied_seq = seq
            return len(members)

    def apply_clear(self, seq: int) -> int:
        with self.lock:
            n = self._size
            self._live = np.zeros_like(self._live)
            self.released.extend(d for a in self._attrs.values() for d in kept_digests(a))
            self._attrs.clear()
            self._filters.cleared()
            self.hnsw = None
            self._groups.members.clear()
            self._groups.next_intra = [0] * len(self._groups.names)
            self._size = 0
            if self._order is not None:
                self._order.clear()
            self.applied_seq = seq
            return n

    # -- compaction ------------------------------------------------------------------------
    @property
    def dead_rows(self) -> int:
        return self._intra.n - self._size

    def compact(self) -> int:
        """Drop retired rows (replaced or deleted): live rows move to new chunks, keeping their ids.

        Searches already running keep the old chunks and mask, so they finish on a consistent
        picture; nothing outside this class holds a row number. Returns the rows reclaimed.
        """
        self.require_checked()
        with self.lock:
            n = self._intra.n
            rows = np.flatnonzero(self._live[:n])
            reclaimed = n - len(rows)
            if reclaimed == 0:
                return 0
            chunk_rows = self._intra.chunk_rows

            def moved(old: ChunkedRows) -> ChunkedRows:
                new = ChunkedRows(old.dtype, None, chunk_rows)
                for start in range(0, len(rows), chunk_rows):
                    new.append(old.take(rows[start : start + chunk_rows]))
                return new

            index_rows = self.index.compacted(rows)
            intra, times = moved(self._intra), moved(self._time)
            old_live = self._live
            live = np.zeros(max(len(rows), 1024), np.uint8)
            live[: len(rows)] = 1
            self._groups.members.remap(rows)
            attrs = {int(np.searchsorted(rows, r)): a for r, a in self._attrs.items() if r < n and old_live[r]}
            self.index.pinned, self._intra, self._time = index_rows, intra, times
            self._live, self._attrs = live, attrs
            self._filters.compacted(rows)
            ids_flat = np.zeros(len(live), np.int64)
            ids_flat[: len(rows)] = self._ids_flat[rows]
            group_flat = np.zeros(len(live), np.int32)
            group_flat[: len(rows)] = self._group_flat[rows]
            self._ids_flat, self._group_flat = ids_flat, group_flat
            self.layout += 1  # the keys are the same: ``_order`` stands
            return reclaimed
