"""The vectors of a database behind one interface: add rows, search with a row mask.

``ExactIndex`` scans every live row with the native kernel. An approximate (HNSW) index
can sit beside it behind the same interface; rows are the record store's row numbers,
which never change for a stored vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from lookalike.server.core.backends.builtin.chunks import CHUNK_ROWS, ChunkedRows

from lookalike import native


class Index(Protocol):
    dimension: int

    def add(self, vectors: np.ndarray) -> int: ...
    def vector(self, row: int) -> np.ndarray: ...
    def chunks(self, n: int) -> list[np.ndarray]: ...
    def search(
        self, query: np.ndarray, k: int, live: np.ndarray, n: int, groups: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


# bf16: bit patterns in uint16; i8: int8 with one float32 scale per row, plus a float32 copy for re-ranking
STORAGE_DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "i8": np.int8}
RERANK_FACTOR = 4  # i8: candidates per result taken from the int8 scan and re-scored exactly


def to_storage(vectors: np.ndarray, storage: str) -> np.ndarray:
    if storage == "bf16":
        return native.to_bfloat16(vectors)
    if storage == "i8":
        return native.quantize_int8(vectors)[0]
    return vectors.astype(STORAGE_DTYPES[storage], copy=False)


def from_storage(stored: np.ndarray, storage: str) -> np.ndarray:
    """Stored rows as float32 (f32/f16/bf16; an i8 database answers from its float32 copy instead)."""
    if storage == "bf16":
        return native.from_bfloat16(np.ascontiguousarray(stored))
    return np.asarray(stored, dtype=np.float32)


@dataclass(frozen=True)
class Pinned:
    """One consistent set of an index's chunk columns; a compaction swaps the whole set at once.

    ``scales`` and ``full`` exist for i8 only: the per-row scale, and the float32 rows the
    int8 candidates are re-scored from (in memory, or memory-mapped snapshot files).
    """

    vectors: ChunkedRows
    scales: ChunkedRows | None = None
    full: ChunkedRows | None = None


class ExactIndex:
    """Exact inner-product top-k over rows kept in fixed-size chunks, stored as f32, f16, bf16 or i8.

    Queries are float32 always; f16/bf16 halve the bytes the kernel streams (the search is
    memory-bound at one query) for score differences of about 1e-3; i8 quarters them and
    re-ranks ``rerank_factor * k`` candidates exactly from the float32 copy, so the scores
    returned are exact cosines.
    """

    name = "exact"

    def __init__(
        self, dimension: int, chunk_rows: int = CHUNK_ROWS, storage: str = "f32", rerank_factor: int = RERANK_FACTOR
    ) -> None:
        self.dimension = dimension
        self.storage = storage
        self.rerank_factor = rerank_factor
        quantized = storage == "i8"
        self.pinned = Pinned(
            ChunkedRows(STORAGE_DTYPES[storage], dimension, chunk_rows),
            ChunkedRows(np.float32, None, chunk_rows) if quantized else None,
            ChunkedRows(np.float32, dimension, chunk_rows) if quantized else None,
        )

    @property
    def rows(self) -> ChunkedRows:
        return self.pinned.vectors

    def pin(self) -> Pinned:
        """The current columns, for a search or snapshot that must not see a compaction's swap."""
        return self.pinned

    def add(self, vectors: np.ndarray) -> int:
        p = self.pinned
        if p.full is not None and p.scales is not None:
            x = np.ascontiguousarray(vectors, dtype=np.float32)
            q, s = native.quantize_int8(x)
            p.full.append(x)
            p.scales.append(s)
            return p.vectors.append(q)
        return p.vectors.append(to_storage(vectors, self.storage))

    def vector(self, row: int) -> np.ndarray:
        p = self.pinned
        if p.full is not None:
            return np.array(p.full[row], np.float32)
        return from_storage(p.vectors[row][np.newaxis], self.storage)[0]

    def take(self, rows: np.ndarray, pinned: Pinned | None = None) -> np.ndarray:
        """Rows as float32 (exact for i8: read from the float32 copy)."""
        p = pinned or self.pinned
        if p.full is not None:
            return p.full.take(rows)
        return from_storage(p.vectors.take(rows), self.storage)

    def take_stored(self, rows: np.ndarray, pinned: Pinned | None = None) -> np.ndarray:
        """Rows as float32 as stored (i8: scale * int8), for building a graph without reading the float32 copy."""
        p = pinned or self.pinned
        if p.scales is not None:
            return p.vectors.take(rows).astype(np.float32) * p.scales.take(rows)[:, None]
        return self.take(rows, p)

    def chunks(self, n: int) -> list[np.ndarray]:
        return self.pinned.vectors.views(n)

    def compacted(self, keep: np.ndarray) -> Pinned:
        """New columns holding only rows ``keep`` (in that order); the caller swaps them in."""
        p = self.pinned

        def moved(old: ChunkedRows) -> ChunkedRows:
            new = ChunkedRows(old.dtype, old.width, old.chunk_rows)
            for start in range(0, len(keep), old.chunk_rows):
                new.append(old.take(keep[start : start + old.chunk_rows]))
            return new

        return Pinned(
            moved(p.vectors),
            moved(p.scales) if p.scales is not None else None,
            moved(p.full) if p.full is not None else None,
        )

    def search(
        self,
        query: np.ndarray,
        k: int,
        live: np.ndarray,
        n: int,
        groups: np.ndarray | None = None,
        rows: Pinned | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` live rows, or the best row of each of the ``k`` best groups when ``groups`` is given.

        ``rows`` pins the columns a caller captured with its mask (a compaction may swap them).

        One native call over every chunk: the kernel applies the mask and keeps a bounded
        per-group best inside the scan, so one-per-group costs one pass, not repeated scans.
        For i8 the scan returns ``rerank_factor * k`` candidates, re-scored from float32.
        """
        if n == 0 or k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        p = rows or self.pinned
        chunks = p.vectors.views(n)
        one = groups is not None
        if p.scales is not None and p.full is not None:
            c = max(k, self.rerank_factor * k)
            _, cand = native.topk(
                chunks, query, c, n=n, live=live, groups=groups, one_per_group=one, scales=p.scales.views(n)
            )
            scores, ids = native.rerank(p.full.views(n), query, cand, k)
        else:
            scores, ids = native.topk(chunks, query, k, n=n, live=live, groups=groups, one_per_group=one)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]
