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


STORAGE_DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}  # bf16: bit patterns in uint16


def to_storage(vectors: np.ndarray, storage: str) -> np.ndarray:
    if storage == "bf16":
        return native.to_bfloat16(vectors)
    return vectors.astype(STORAGE_DTYPES[storage], copy=False)


def from_storage(stored: np.ndarray, storage: str) -> np.ndarray:
    """Stored rows as float32 (for re-ranking, GetImage and moving rows)."""
    if storage == "bf16":
        return native.from_bfloat16(np.ascontiguousarray(stored))
    return np.asarray(stored, dtype=np.float32)


class ExactIndex:
    """Exact inner-product top-k over rows kept in fixed-size chunks, stored as f32, f16 or bf16.

    Queries are float32 always; f16/bf16 halve the bytes the kernel streams (the search is
    memory-bound at one query) for score differences of about 1e-3.
    """

    name = "exact"

    def __init__(
        self, dimension: int, rows: ChunkedRows | None = None, chunk_rows: int = CHUNK_ROWS, storage: str = "f32"
    ) -> None:
        self.dimension = dimension
        self.storage = storage
        self.rows = rows if rows is not None else ChunkedRows(STORAGE_DTYPES[storage], dimension, chunk_rows)

    def add(self, vectors: np.ndarray) -> int:
        return self.rows.append(to_storage(vectors, self.storage))

    def vector(self, row: int) -> np.ndarray:
        return from_storage(self.rows[row][np.newaxis], self.storage)[0]

    def take(self, rows: np.ndarray, chunks: ChunkedRows | None = None) -> np.ndarray:
        """Rows as float32."""
        return from_storage((chunks or self.rows).take(rows), self.storage)

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
