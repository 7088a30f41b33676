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

    def search(
        self,
        query: np.ndarray,
        k: int,
        live: np.ndarray,
        n: int,
        groups: np.ndarray | None = None,
        rows: ChunkedRows | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` live rows, or the best row of each of the ``k`` best groups when ``groups`` is given.

        ``rows`` pins the chunks a caller captured with its mask (a compaction may swap them).

        One native call over every chunk: the kernel applies the mask and keeps a bounded
        per-group best inside the scan, so one-per-group costs one pass, not repeated scans.
        """
        if n == 0 or k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        chunks = (rows or self.rows).views(n)
        scores, ids = native.topk(chunks, query, k, n=n, live=live, groups=groups, one_per_group=groups is not None)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]
