"""One database: a record store (stable ids, keys, timestamps, live flags) and an ``Index``.

Each stored vector gets a row in fixed-size chunks and a stable internal id; an upsert or
delete clears the old row's live flag, so a search in progress never sees a half-written
vector and a finished delete is never returned again. Nothing outside this file uses row
numbers as identity. Mutations arrive only as commands (``commands.py``), already logged.
"""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lookalike.server.core.chunks import CHUNK_ROWS, ChunkedRows
from lookalike.server.core.commands import SetImages, SetItem
from lookalike.server.core.errors import ErrorKind, LookalikeError, not_found
from lookalike.server.core.hnsw import HnswIndex, HnswSettings
from lookalike.server.core.index import ExactIndex, Pinned
from lookalike.server.core.memory import release_free_memory

from lookalike import native

Key = tuple[str, int]


@dataclass(frozen=True)
class Hit:
    group_id: str
    intra_id: int
    score: float
    attributes: dict[str, str] | None = None


@dataclass(frozen=True)
class Entry:
    group_id: str
    intra_id: int
    update_time: float
    vector: np.ndarray
    attributes: dict[str, str] = field(default_factory=dict)


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
    graph: HnswIndex | None = None  # a ready HNSW graph, saved beside the rows
    on_saved: Any = None  # called with the float32 copy's saved chunks (memory maps) to drop in-memory ones


class _Members:
    """Live images by (group number, intra_id) -> row, compact enough for 10M images.

    A dict entry per image (the former ``{group: {intra_id: row}}``) costs 100-500 bytes of
    Python objects per image; here the keys ``group << 32 | intra_id`` and rows sit in two sorted
    int64 arrays (16 bytes per image), changes go to a small dict first and are merged in batches
    (a linear merge per ``MERGE`` changes). intra_ids of 2**32 and above (rare: ids are assigned
    in sequence) stay in a dict of their own.
    """

    MERGE = 65536

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.rows = np.zeros(0, np.int64)
        self.recent: dict[int, int] = {}  # key -> row, or -1 for removed
        self.big: dict[tuple[int, int], int] = {}
        self.per_group = np.zeros(0, np.int64)  # live images per group number
        self.groups = 0  # groups holding at least one image

    @staticmethod
    def _key(g: int, intra: int) -> int:
        return (g << 32) | intra

    def get(self, g: int, intra: int) -> int | None:
        if intra >= 1 << 32:
            return self.big.get((g, intra))
        key = self._key(g, intra)
        row = self.recent.get(key)
        if row is not None:
            return row if row >= 0 else None
        pos = int(np.searchsorted(self.keys, key))
        if pos < len(self.keys) and int(self.keys[pos]) == key:
            return int(self.rows[pos])
        return None

    def count(self, g: int) -> int:
        return int(self.per_group[g]) if 0 <= g < len(self.per_group) else 0

    def _counted(self, g: int, delta: int) -> None:
        if g >= len(self.per_group):
            grown = np.zeros(max(g + 1, 2 * len(self.per_group), 1024), np.int64)
            grown[: len(self.per_group)] = self.per_group
            self.per_group = grown
        before = int(self.per_group[g])
        self.per_group[g] = before + delta
        self.groups += (before == 0 and delta > 0) - (before + delta == 0 and before > 0)

    def set(self, g: int, intra: int, row: int) -> int | None:
        """Points (g, intra) at ``row``; returns the row it replaces, if any."""
        old = self.get(g, intra)
        if intra >= 1 << 32:
            self.big[(g, intra)] = row
        else:
            self.recent[self._key(g, intra)] = row
            self._maybe_merge()
        if old is None:
            self._counted(g, 1)
        return old

    def remove(self, g: int, intra: int) -> int | None:
        old = self.get(g, intra)
        if old is None:
            return None
        if intra >= 1 << 32:
            del self.big[(g, intra)]
        else:
            self.recent[self._key(g, intra)] = -1
            self._maybe_merge()
        self._counted(g, -1)
        return old

    def _maybe_merge(self) -> None:
        if len(self.recent) >= self.MERGE:
            self.merge()

    def merge(self) -> None:
        if not self.recent:
            return
        rk = np.fromiter(self.recent.keys(), np.int64, len(self.recent))
        rr = np.fromiter(self.recent.values(), np.int64, len(self.recent))
        keep = ~np.isin(self.keys, rk)
        keys, rows = self.keys[keep], self.rows[keep]
        add = rr >= 0
        rk, rr = rk[add], rr[add]
        order = np.argsort(rk)
        rk, rr = rk[order], rr[order]
        pos = np.searchsorted(keys, rk)
        self.keys, self.rows = np.insert(keys, pos, rk), np.insert(rows, pos, rr)
        self.recent = {}

    def group(self, g: int) -> dict[int, int]:
        """intra_id -> row of one group, in intra_id order."""
        self.merge()
        a, b = np.searchsorted(self.keys, [g << 32, (g + 1) << 32])
        out = dict(zip((self.keys[a:b] & 0xFFFFFFFF).tolist(), self.rows[a:b].tolist(), strict=True))
        out.update({i: r for (gg, i), r in self.big.items() if gg == g})
        return dict(sorted(out.items()))

    def items(self) -> list[tuple[int, int, int]]:
        """(group, intra_id, row) of every image."""
        self.merge()
        out = list(zip((self.keys >> 32).tolist(), (self.keys & 0xFFFFFFFF).tolist(), self.rows.tolist(), strict=True))
        return out + [(g, i, r) for (g, i), r in self.big.items()]

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def remap(self, kept: np.ndarray) -> None:
        """Rows moved by a compaction: row ``kept[j]`` is now ``j``."""
        self.merge()
        self.rows = np.searchsorted(kept, self.rows).astype(np.int64)
        self.big = {key: int(np.searchsorted(kept, r)) for key, r in self.big.items()}

    @classmethod
    def from_rows(cls, groups: np.ndarray, intras: np.ndarray, rows: np.ndarray) -> _Members:
        m = cls()
        small = intras < (1 << 32)
        keys = (groups[small].astype(np.int64) << 32) | intras[small]
        order = np.argsort(keys, kind="stable")
        m.keys, m.rows = keys[order], rows[small][order].astype(np.int64)
        m.big = {(int(g), int(i)): int(r) for g, i, r in zip(groups[~small], intras[~small], rows[~small], strict=True)}
        counts = np.bincount(groups.astype(np.int64), minlength=1) if len(groups) else np.zeros(0, np.int64)
        m.per_group = counts.astype(np.int64)
        m.groups = int(np.count_nonzero(counts))
        return m


@dataclass
class _Groups:
    names: list[str] = field(default_factory=list)
    number: dict[str, int] = field(default_factory=dict)
    next_intra: list[int] = field(default_factory=list)
    members: _Members = field(default_factory=_Members)  # (group number, intra_id) -> row

    def get_or_add(self, group_id: str) -> int:
        g = self.number.get(group_id)
        if g is None:
            g = self.number[group_id] = len(self.names)
            self.names.append(group_id)
            self.next_intra.append(0)
        return g


class Database:
    def __init__(
        self,
        name: str,
        dimension: int,
        *,
        model: dict[str, Any] | None = None,
        create_time: float = 0.0,
        chunk_rows: int = CHUNK_ROWS,
        storage: str = "f32",
    ) -> None:
        self.name = name
        self.storage = storage
        self.dimension = dimension
        self.metric = "cosine"
        self.model = model or {}
        self.create_time = create_time
        self.foreign: str | None = None  # why this server must not serve it (another model), else None
        self.lock = threading.Lock()
        self.index = ExactIndex(dimension, chunk_rows=chunk_rows, storage=storage)
        self._intra = ChunkedRows(np.int64, None, chunk_rows)
        self._time = ChunkedRows(np.float64, None, chunk_rows)
        self._live = np.zeros(0, np.uint8)
        self._attrs: dict[int, dict[str, str]] = {}  # row -> attributes, for live rows that have any
        # Small per-row columns, contiguous (the kernel and bisections want one array; growth is cheap):
        self._ids_flat = np.zeros(0, np.int64)  # image id by row, ascending, so id -> row is a bisection
        self._group_flat = np.zeros(0, np.int32)  # group number by row (one-per-group scans read it as is)
        self._hnsw_settings: HnswSettings | None = None
        self.hnsw: HnswIndex | None = None
        self._groups = _Groups()
        self._size = 0
        self.next_image_id = 0
        self.incarnation = 0  # sequence number of the command that created it (names its files)
        self.layout = 0  # bumped by each compaction: rows moved, so snapshot files are never reused across it
        self.applied_seq = 0  # last log record applied
        self.snapshot_seq = -1  # applied_seq at the last snapshot
        self._sorted: list[Key] | None = None

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
        if self.foreign is not None:
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "MODEL_MISMATCH", self.foreign)

    def _row(self, group_id: str, intra_id: int) -> int:
        g = self._groups.number.get(group_id)
        row = self._groups.members.get(g, intra_id) if g is not None else None
        if row is None:
            raise not_found(
                "IMAGE_NOT_FOUND", f"database {self.name!r} has no image group_id={group_id!r} intra_id={intra_id}"
            )
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
                raise not_found("GROUP_NOT_FOUND", f"database {self.name!r} has no group {group_id!r}")

    def list(self, *, group_id: str | None, after: Key | None, limit: int) -> tuple[list[Entry], bool]:
        """Entries ordered by key, strictly after ``after``; returns (page, more_left)."""
        with self.lock:
            if group_id is not None:
                g = self._groups.number.get(group_id)
                keys = [(group_id, i) for i in self._groups.members.group(g)] if g is not None else []
            else:
                if self._sorted is None:
                    names = self._groups.names
                    self._sorted = sorted((names[g], i) for g, i, _ in self._groups.members.items())
                keys = self._sorted
            start = bisect.bisect_right(keys, after) if after is not None else 0
            page = keys[start : start + limit]
            return [self._entry(self._row(g, i)) for g, i in page], start + limit < len(keys)

    # -- planning (under the catalog's write lock, before logging) ---------------------------
    def plan_set(
        self, requests: list[tuple[str, int | None, str, dict[str, str] | None]], vectors: np.ndarray, now: float
    ) -> SetImages:
        """Choose intra ids (next in group when None) and internal ids for a set command."""
        pending: dict[str, int] = {}  # group -> next intra_id after the items planned so far
        items = []
        with self.lock:
            for k, (group_id, intra_id, request_id, attributes) in enumerate(requests):
                if group_id not in pending:
                    g = self._groups.number.get(group_id)
                    has = g is not None and self._groups.members.count(g) > 0
                    pending[group_id] = self._groups.next_intra[g] if has else 0
                if intra_id is None:
                    intra_id = pending[group_id]
                pending[group_id] = max(pending[group_id], intra_id + 1)
                items.append(SetItem(group_id, intra_id, self.next_image_id + k, request_id, attributes or None))
        return SetImages(self.name, tuple(items), vectors, now)

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
            live = _grown(self._live, len(self._live), first + n)
            new_ids = np.array([i.image_id for i in cmd.items], np.int64)
            self._ids_flat = _grown(self._ids_flat, first, first + n)
            self._ids_flat[first : first + n] = new_ids
            self._group_flat = _grown(self._group_flat, first, first + n)
            self._group_flat[first : first + n] = groups
            retired: list[int] = []
            replaced = []
            for k, item in enumerate(cmd.items):
                g = int(groups[k])
                old = self._groups.members.set(g, item.intra_id, first + k)
                if old is not None:
                    live[old] = 0
                    self._attrs.pop(old, None)
                    retired.append(int(self._ids_flat[old]))
                else:
                    self._size += 1
                if item.attributes:
                    self._attrs[first + k] = dict(item.attributes)
                live[first + k] = 1
                self._groups.next_intra[g] = max(self._groups.next_intra[g], item.intra_id + 1)
                replaced.append(old is not None)
            self._live = live
            self.next_image_id = max(self.next_image_id, max(i.image_id for i in cmd.items) + 1)
            self._sorted = None
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
            self._attrs.pop(row, None)
            if self.hnsw is not None:
                self.hnsw.remove([int(self._ids_flat[row])], seq)
            self._groups.members.remove(g, intra_id)
            if not self._groups.members.count(g):
                self._groups.next_intra[g] = 0
            self._size -= 1
            self._sorted = None
            self.applied_seq = seq

    def apply_delete_group(self, group_id: str, seq: int) -> int:
        with self.lock:
            g = self._groups.number.get(group_id)
            members = self._groups.members.group(g) if g is not None else None
            if not members:
                raise not_found("GROUP_NOT_FOUND", f"database {self.name!r} has no group {group_id!r}")
            for intra in members:
                self._groups.members.remove(g, intra)
            live = self._live.copy()
            live[list(members.values())] = 0
            self._live = live
            for row in members.values():
                self._attrs.pop(row, None)
            if self.hnsw is not None:
                self.hnsw.remove([int(self._ids_flat[r]) for r in members.values()], seq)
            self._groups.next_intra[g] = 0
            self._size -= len(members)
            self._sorted = None
            self.applied_seq = seq
            return len(members)

    def apply_clear(self, seq: int) -> int:
        with self.lock:
            n = self._size
            self._live = np.zeros_like(self._live)
            self._attrs.clear()
            self.hnsw = None
            self._groups.members.clear()
            self._groups.next_intra = [0] * len(self._groups.names)
            self._size = 0
            self._sorted = None
            self.applied_seq = seq
            return n

    # -- search ----------------------------------------------------------------------------
    def search(self, query: np.ndarray, top_k: int, **options: Any) -> tuple[list[Hit], int]:
        """Top-k by cosine: (hits, images compared); ``search_tier`` also says which index answered."""
        hits, searched, _ = self.search_tier(query, top_k, **options)
        return hits, searched

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
        """Top-k by cosine among the rows that pass the filter (a row mask for the kernel).

        ``where`` is an equality filter on attributes, ``group_prefix`` a prefix of group_id.
        Plain top-k on a database with a ready HNSW graph goes there (candidates re-ranked
        exactly); everything else is an exact scan. Returns (hits, images compared, index).
        """
        with self.lock:
            n = self._intra.n
            live = self._live[:n]
            searched = self._size
            if where or group_prefix:
                live = self._filter_mask(live, where or {}, group_prefix)
                searched = int(np.count_nonzero(live))
            if exclude is not None:
                g = self._groups.number.get(exclude[0])
                row = self._groups.members.get(g, exclude[1]) if g is not None else None
                if row is not None and live[row]:
                    live = live.copy()
                    live[row] = 0
                    searched -= 1
            names = self._groups.names
            group_rows = self._group_flat[:n]  # a view: rows below n never change
            groups = group_rows if one_per_group else None
            attrs, intra_rows, index_rows = self._attrs, self._intra, self.index.pin()
            graph = self.hnsw if self.hnsw is not None and self.hnsw.ready else None
            if one_per_group or where or group_prefix:
                graph = None
            ids_flat = self._ids_flat[:n]
        if searched <= 0:
            return [], 0, "exact"
        k = min(top_k, searched)
        tier = "exact"
        if graph is not None:
            scores, rows = self._graph_search(graph, query, k, live, ids_flat, index_rows, self.index)
            tier = "hnsw"
        else:
            scores, rows = self.index.search(query, k, live, n, groups, rows=index_rows)
        hits = []
        for score, row in zip(scores.tolist(), rows.tolist(), strict=True):
            if min_score is not None and score < min_score:
                break
            found = attrs.get(row) if with_attributes else None
            hits.append(Hit(names[int(group_rows[row])], int(intra_rows[row]), score, dict(found) if found else None))
        return hits, searched, tier

    @staticmethod
    def _graph_search(
        graph: HnswIndex,
        query: np.ndarray,
        k: int,
        live: np.ndarray,
        ids_flat: np.ndarray,
        rows: Pinned,
        index: ExactIndex,
    ) -> tuple[np.ndarray, np.ndarray]:
        """HNSW candidates, checked against the live mask, re-scored exactly from the float32 rows."""
        ids = graph.candidates(query, max(k * graph.settings.rerank_factor, k + 16))
        ids = ids[ids >= 0]
        pos = np.searchsorted(ids_flat, ids)
        pos = np.minimum(pos, len(ids_flat) - 1)
        ok = (ids_flat[pos] == ids) & (live[pos] != 0)
        cand = np.unique(pos[ok])
        if len(cand) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = index.take(cand, rows) @ query
        order = np.lexsort((cand, -scores))[:k]
        return scores[order].astype(np.float32), cand[order]

    def _maybe_build_graph(self) -> None:
        """Start building the HNSW graph in the background once the database is large enough (lock held)."""
        s = self.hnsw_settings
        loaded = self.hnsw
        if loaded is not None and loaded.loaded:
            why = ""
            if s is None or s.threshold <= 0:
                why = "the HNSW tier is off"
            elif loaded.seq > self.applied_seq:
                why = f"it saw log record {loaded.seq}, the log ends at {self.applied_seq}"
            elif loaded.dtype != s.dtype:
                why = f"it stores {loaded.dtype}, the settings say {s.dtype}"
            if why:
                logging.getLogger(__name__).warning("HNSW graph of %r dropped (%s); rebuilding", self.name, why)
                self.hnsw = None
            else:
                loaded.loaded = False  # checked once, at start-up
        if s is None or s.threshold <= 0 or self.hnsw is not None or self._size < s.threshold:
            return
        from lookalike.server.core import hnsw as hnsw_module

        hnsw_module.builds += 1
        graph = HnswIndex(self.dimension, s)
        graph.seq = self.applied_seq
        self.hnsw = graph
        n = self._intra.n
        rows = np.flatnonzero(self._live[:n])
        ids = self._ids_flat[rows].copy()
        index_rows = self.index.pin()
        index = self.index

        threads = max(1, native.get_threads())

        def build() -> None:
            import time

            started = time.monotonic()
            for start in range(0, len(rows), 8192):
                if self.hnsw is not graph:
                    return  # cleared meanwhile
                # the build shares the kernel's thread budget (the server's --threads setting)
                part = rows[start : start + 8192]
                graph.add(ids[start : start + 8192], index.take_stored(part, index_rows), threads=threads)
            with self.lock:
                graph.ready = True
                self.snapshot_seq = -1  # the next snapshot saves the graph with the rows
            release_free_memory()  # the build's scratch (float32 copies of every batch) goes back
            logging.getLogger(__name__).info("HNSW graph of %r ready: %d images in %.1fs", self.name, len(rows),
                                             time.monotonic() - started)  # fmt: skip

        threading.Thread(target=build, name=f"hnsw-{self.name}", daemon=True).start()

    def _filter_mask(self, live: np.ndarray, where: dict[str, str], group_prefix: str) -> np.ndarray:
        """Live rows whose attributes equal ``where`` and whose group starts with ``group_prefix``."""
        mask = np.zeros(len(live), np.uint8)
        if where:
            rows = [r for r, a in self._attrs.items() if all(a.get(k) == v for k, v in where.items())]
            if group_prefix:
                names = self._groups.names
                rows = [r for r in rows if names[int(self._group_flat[r])].startswith(group_prefix)]
            mask[rows] = 1
        else:
            names = self._groups.names
            chosen = np.zeros(len(names) + 1, bool)
            chosen[[g for g, name in enumerate(names) if name.startswith(group_prefix)]] = True
            mask = chosen[self._group_flat[: len(live)]].astype(np.uint8)
        return mask & live

    # -- compaction ------------------------------------------------------------------------
    @property
    def dead_rows(self) -> int:
        return self._intra.n - self._size

    def compact(self) -> int:
        """Drop retired rows (replaced or deleted): live rows move to new chunks, keeping their ids.

        Searches already running keep the old chunks and mask, so they finish on a consistent
        picture; nothing outside this class holds a row number. Returns the rows reclaimed.
        """
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
            ids_flat = np.zeros(len(live), np.int64)
            ids_flat[: len(rows)] = self._ids_flat[rows]
            group_flat = np.zeros(len(live), np.int32)
            group_flat[: len(rows)] = self._group_flat[rows]
            self._ids_flat, self._group_flat = ids_flat, group_flat
            self._sorted = None
            self.layout += 1
            return reclaimed

    # -- snapshots -------------------------------------------------------------------------
    def snapshot_view(self) -> SnapshotView:
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

            graph = self.hnsw if self.hnsw is not None and self.hnsw.ready else None
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
            chunk_rows=chunk_rows, storage=meta.get("storage", "f32"),
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
        db._live = _grown(db._live, 0, n)
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
            db._groups.members = _Members.from_rows(groups, intras, rows)
        db._size = len(rows)
        db._attrs = {int(row): dict(a) for row, a in (attributes or {}).items()}
        db.next_image_id = int(meta["next_image_id"])
        db.applied_seq = db.snapshot_seq = int(meta["applied_seq"])
        db.incarnation = int(meta["incarnation"])
        db.layout = int(meta.get("layout", 0))
        return db


def _grown(array: np.ndarray, used: int, rows: int) -> np.ndarray:
    """``array`` with room for ``rows`` (doubling; the first ``used`` entries copied), or itself."""
    if rows <= len(array):
        return array
    grown = np.zeros(max(rows, 2 * len(array), 1024), array.dtype)
    grown[:used] = array[:used]
    return grown


def _slices(array: np.ndarray, n: int, chunk_rows: int) -> list[np.ndarray]:
    """The first ``n`` entries as snapshot chunks (views)."""
    return [array[i : min(n, i + chunk_rows)] for i in range(0, n, chunk_rows)]
