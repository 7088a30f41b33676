"""One database: L2-normalised vectors keyed by (group_id, intra_id), searched exactly.

Rows are append-only; an upsert or delete tombstones the old row (``live[row] = 0``), so a
search in progress never sees a half-written vector and a finished delete is never
returned again. Tombstones are compacted away once they are the majority.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

import numpy as np
from lookalike.server.core.errors import invalid, not_found
from lookalike.server.core.validation import check_group_id, check_intra_id

from lookalike import native

Key = tuple[str, int]
_MIN_CAPACITY = 1024


@dataclass(frozen=True)
class Hit:
    group_id: str
    intra_id: int
    score: float


@dataclass(frozen=True)
class Entry:
    group_id: str
    intra_id: int
    update_time: float
    vector: np.ndarray


class Database:
    def __init__(self, name: str, dimension: int, *, metric: str = "cosine") -> None:
        self.name = name
        self.dimension = dimension
        self.metric = metric
        self.create_time = time.time()
        self._lock = threading.Lock()
        self._vectors = np.zeros((0, dimension), np.float32)
        self._live = np.zeros(0, np.uint8)
        self._keys: list[Key] = []
        self._times: list[float] = []
        self._count = 0  # rows used, live or dead
        self._row_of: dict[Key, int] = {}
        self._groups: dict[str, dict[int, int]] = {}  # group_id -> {intra_id: row}
        self._sorted_keys: list[Key] | None = None

    # -- reads -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self._row_of)

    @property
    def group_count(self) -> int:
        return len(self._groups)

    def get(self, group_id: str, intra_id: int) -> Entry:
        with self._lock:
            row = self._row_of.get((group_id, intra_id))
            if row is None:
                raise not_found(
                    "IMAGE_NOT_FOUND",
                    f"database {self.name!r} has no image group_id={group_id!r} intra_id={intra_id}",
                )
            return Entry(group_id, intra_id, self._times[row], self._vectors[row].copy())

    def list(self, *, group_id: str | None, after: Key | None, limit: int) -> tuple[list[Entry], bool]:
        """Entries ordered by key, strictly after ``after``; returns (page, more_left)."""
        with self._lock:
            if group_id is not None:
                rows = self._groups.get(group_id, {})
                keys = [(group_id, i) for i in sorted(rows)]
            else:
                if self._sorted_keys is None:
                    self._sorted_keys = sorted(self._row_of)
                keys = self._sorted_keys
            start = bisect.bisect_right(keys, after) if after is not None else 0
            page = keys[start : start + limit]
            out = [
                Entry(g, i, self._times[self._row_of[(g, i)]], self._vectors[self._row_of[(g, i)]].copy())
                for g, i in page
            ]
            return out, start + limit < len(keys)

    # -- writes ----------------------------------------------------------------------------
    def set(self, group_id: str, intra_id: int | None, vector: np.ndarray) -> tuple[Key, bool]:
        """Upsert one unit vector; ``intra_id=None`` takes the group's next number."""
        check_group_id(group_id)
        if vector.shape != (self.dimension,):
            raise invalid("DIMENSION_MISMATCH", f"vector has shape {vector.shape}, expected ({self.dimension},)")
        with self._lock:
            if intra_id is None:
                members = self._groups.get(group_id)
                intra_id = (max(members) + 1) if members else 0
            check_intra_id(intra_id)
            key = (group_id, intra_id)
            old = self._row_of.get(key)
            self._reserve(self._count + 1)
            row = self._count
            self._vectors[row] = vector
            self._keys.append(key)
            self._times.append(time.time())
            self._live[row] = 1
            self._count += 1
            if old is not None:
                self._live[old] = 0
            else:
                self._sorted_keys = None
            self._row_of[key] = row
            self._groups.setdefault(group_id, {})[intra_id] = row
            return key, old is not None

    def delete(self, group_id: str, intra_id: int) -> None:
        with self._lock:
            row = self._row_of.pop((group_id, intra_id), None)
            if row is None:
                raise not_found(
                    "IMAGE_NOT_FOUND",
                    f"database {self.name!r} has no image group_id={group_id!r} intra_id={intra_id}",
                )
            self._live[row] = 0
            members = self._groups[group_id]
            del members[intra_id]
            if not members:
                del self._groups[group_id]
            self._sorted_keys = None
            self._maybe_compact()

    def delete_group(self, group_id: str) -> int:
        with self._lock:
            members = self._groups.pop(group_id, None)
            if not members:
                raise not_found("GROUP_NOT_FOUND", f"database {self.name!r} has no group {group_id!r}")
            for intra_id, row in members.items():
                self._live[row] = 0
                del self._row_of[(group_id, intra_id)]
            self._sorted_keys = None
            self._maybe_compact()
            return len(members)

    def clear(self) -> int:
        with self._lock:
            n = len(self._row_of)
            self._vectors = np.zeros((0, self.dimension), np.float32)
            self._live = np.zeros(0, np.uint8)
            self._keys, self._times, self._count = [], [], 0
            self._row_of, self._groups, self._sorted_keys = {}, {}, None
            return n

    def _reserve(self, rows: int) -> None:
        cap = len(self._vectors)
        if rows <= cap:
            return
        new_cap = max(_MIN_CAPACITY, cap * 2, rows)
        vectors = np.zeros((new_cap, self.dimension), np.float32)
        vectors[: self._count] = self._vectors[: self._count]
        live = np.zeros(new_cap, np.uint8)
        live[: self._count] = self._live[: self._count]
        # Swap in new arrays: searches holding the old ones keep a consistent snapshot.
        self._vectors, self._live = vectors, live

    def _maybe_compact(self) -> None:
        dead = self._count - len(self._row_of)
        if dead < 4096 or dead * 2 < self._count:
            return
        rows = np.flatnonzero(self._live[: self._count])
        keys = [self._keys[r] for r in rows]
        times = [self._times[r] for r in rows]
        cap = max(_MIN_CAPACITY, len(rows) * 2)
        vectors = np.zeros((cap, self.dimension), np.float32)
        vectors[: len(rows)] = self._vectors[rows]
        live = np.zeros(cap, np.uint8)
        live[: len(rows)] = 1
        self._vectors, self._live, self._keys, self._times = vectors, live, keys, times
        self._count = len(rows)
        self._row_of = {k: i for i, k in enumerate(keys)}
        self._groups = {}
        for i, (g, intra) in enumerate(keys):
            self._groups.setdefault(g, {})[intra] = i

    # -- search ----------------------------------------------------------------------------
    def search(
        self,
        query: np.ndarray,
        top_k: int,
        *,
        one_per_group: bool = False,
        min_score: float | None = None,
        exclude: Key | None = None,
    ) -> tuple[list[Hit], int]:
        """Exact top-k by cosine; returns (hits best first, number of images compared)."""
        with self._lock:
            n = self._count
            vectors = self._vectors[:n]
            live = self._live[:n].copy()  # private copy: later deletes cannot race the kernel
            keys = self._keys
            searched = len(self._row_of)
            if exclude is not None and exclude in self._row_of:
                live[self._row_of[exclude]] = 0
                searched -= 1
        if searched <= 0:
            return [], 0
        k = min(top_k, searched)
        # One-per-group needs more candidates than k; grow the pool until enough groups or exhausted.
        pool = k if not one_per_group else min(searched, max(4 * k, k + 16))
        while True:
            scores, ids = native.topk(vectors, query, pool, live=live)
            hits: list[Hit] = []
            seen: set[str] = set()
            below_min = False
            for score, row in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
                if row < 0:
                    break
                if min_score is not None and score < min_score:
                    below_min = True
                    break
                g, intra = keys[row]
                if one_per_group:
                    if g in seen:
                        continue
                    seen.add(g)
                hits.append(Hit(g, intra, score))
                if len(hits) == k:
                    break
            if not one_per_group or len(hits) == k or below_min or pool >= searched:
                return hits, searched
            pool = min(searched, pool * 4)
