"""Per-row arrays stored in fixed-size chunks that never move.

Growing a database appends a chunk instead of copying the whole matrix under a lock
(a 355 ms stall at 65,536 x 512 and seconds at 1M x 1280 with a doubling array), and
rows already written never change, so searches and snapshots read them without a copy.
"""

from __future__ import annotations

import numpy as np

CHUNK_ROWS = 65536


SMALL_TAKE = 64  # up to this many rows, take() copies row by row (re-rank candidates)


class ChunkedRows:
    def __init__(self, dtype: np.dtype | type, width: int | None = None, chunk_rows: int = CHUNK_ROWS) -> None:
        self.dtype = np.dtype(dtype)
        self.width = width
        self.chunk_rows = chunk_rows
        self.chunks: list[np.ndarray] = []
        self.n = 0

    def _shape(self, rows: int) -> tuple[int, ...]:
        return (rows,) if self.width is None else (rows, self.width)

    def append(self, values: np.ndarray) -> int:
        """Append rows; returns the first new row number."""
        first = self.n
        done = 0
        total = len(values)
        while done < total:
            chunk, offset = divmod(self.n, self.chunk_rows)
            if chunk == len(self.chunks):
                self.chunks.append(np.zeros(self._shape(self.chunk_rows), self.dtype))  # pages come lazily
            take = min(total - done, self.chunk_rows - offset)
            self.chunks[chunk][offset : offset + take] = values[done : done + take]
            done += take
            self.n += take
        return first

    def __getitem__(self, row: int) -> np.ndarray:
        chunk, offset = divmod(row, self.chunk_rows)
        return self.chunks[chunk][offset]

    def items(self, rows: list[int]) -> list:
        """Values of a 1-D column at a few rows, as Python scalars (a search's hits)."""
        chunks, per = self.chunks, self.chunk_rows
        return [chunks[row // per].item(row % per) for row in rows]

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.empty(self._shape(len(rows)), self.dtype)
        if len(rows) <= SMALL_TAKE:  # a search's few candidates: row by row beats grouping them by chunk
            chunks, per = self.chunks, self.chunk_rows
            for i, row in enumerate(rows.tolist()):
                out[i] = chunks[row // per][row % per]
            return out
        chunk = rows // self.chunk_rows
        offset = rows % self.chunk_rows
        for c in np.unique(chunk):
            sel = chunk == c
            out[sel] = self.chunks[int(c)][offset[sel]]
        return out

    def views(self, n: int | None = None) -> list[np.ndarray]:
        """The first ``n`` rows as chunk views (no copy); the last view may be partial."""
        n = self.n if n is None else n
        out = []
        for i, chunk in enumerate(self.chunks):
            start = i * self.chunk_rows
            if start >= n:
                break
            out.append(chunk[: min(self.chunk_rows, n - start)])
        return out

    @classmethod
    def from_chunks(cls, arrays: list[np.ndarray], n: int, dtype: np.dtype | type, width: int | None = None,
                    chunk_rows: int = CHUNK_ROWS) -> ChunkedRows:  # fmt: skip
        """Adopt full chunks as they are (e.g. memory-mapped snapshot files); copy the partial last one."""
        out = cls(dtype, width, chunk_rows)
        for i, arr in enumerate(arrays):
            rows = min(chunk_rows, n - i * chunk_rows)
            if rows == chunk_rows and len(arr) == chunk_rows:
                out.chunks.append(arr)
            else:
                full = np.zeros(out._shape(chunk_rows), out.dtype)
                full[:rows] = arr[:rows]
                out.chunks.append(full)
        out.n = n
        return out
