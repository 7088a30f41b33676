"""The vectors of a database behind one interface: add rows, search with a row mask.

``ExactIndex`` scans every live row with the native kernel. An approximate (HNSW) index
can sit beside it behind the same interface; rows are the record store's row numbers,
which never change for a stored vector.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from lookalike.server.core.chunks import CHUNK_ROWS, ChunkedRows

from lookalike import native


class Index(Protocol):
    dimension: int

    def add(self, vectors: np.ndarray) -> int: ...
    def vector(self, row: int) -> np.ndarray: ...
    def chunks(self, n: int) -> list[np.ndarray]: ...
    def search(
        self, query: np.ndarray, k: int, live: np.ndarray, n: int, groups: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


class ExactIndex:
    """Exact inner-product top-k over float32 rows kept in fixed-size chunks."""

    name = "exact"

    def __init__(self, dimension: int, rows: ChunkedRows | None = None, chunk_rows: int = CHUNK_ROWS) -> None:
        self.dimension = dimension
        self.rows = rows if rows is not None else ChunkedRows(np.float32, dimension, chunk_rows)

    def add(self, vectors: np.ndarray) -> int:
        return self.rows.append(vectors)

    def vector(self, row: int) -> np.ndarray:
        return self.rows[row].copy()

    def chunks(self, n: int) -> list[np.ndarray]:
        return self.rows.views(n)

    def _topk(self, query: np.ndarray, k: int, live: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for i, chunk in enumerate(self.rows.views(n)):
            start = i * self.rows.chunk_rows
            mask = live[start : start + len(chunk)]
            if not mask.any():
                continue
            s, r = native.topk(chunk, query, min(k, len(chunk)), live=mask)
            keep = r[0] >= 0
            scores.append(s[0][keep])
            rows.append(r[0][keep] + start)
        if not scores:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        s, r = np.concatenate(scores), np.concatenate(rows)
        order = np.lexsort((r, -s))[:k]  # best first; ties to the lower row, as the kernel does
        return s[order], r[order]

    def search(
        self, query: np.ndarray, k: int, live: np.ndarray, n: int, groups: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` live rows (or best row of ``k`` distinct groups when ``groups`` is given)."""
        searchable = int(np.count_nonzero(live[:n]))
        if searchable == 0 or k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if groups is None:
            return self._topk(query, k, live, n)
        pool = min(searchable, max(4 * k, k + 16))
        while True:
            s, r = self._topk(query, pool, live, n)
            g = groups[r]
            _, first = np.unique(g, return_index=True)
            first.sort()
            if len(first) >= k or pool >= searchable:
                first = first[:k]
                return s[first], r[first]
            pool = min(searchable, pool * 4)
