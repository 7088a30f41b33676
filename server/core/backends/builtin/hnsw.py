"""The approximate tier: a usearch HNSW graph over a database's live rows, keyed by stable image ids.

Used for plain top-k above a size threshold; filtered and one-per-group searches stay exact
(the row mask belongs to the exact scan). Candidates are re-ranked exactly from the float32
rows, so scores are true cosines; deletes and upserts are removed from the graph at once and
every candidate is checked against the live mask, so a retired row is never returned. The
graph is built in the background; until it is ready the exact tier answers.

The graph is saved with the database's snapshots and loaded at start-up instead of being
rebuilt. Mutations are idempotent (image ids are never reused; adding a key the graph holds
is skipped, removing one it lacks is a no-op), so replaying the log from the snapshot brings a
graph saved at any later point of that log to the same state. ``seq`` (the last command the
graph has seen) tells start-up when a saved graph is ahead of the log that survived; then it
is dropped and rebuilt.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from lookalike.server import defaults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HnswSettings:
    threshold: int = defaults.HNSW_THRESHOLD  # live images from which a database gets a graph; 0 = never
    connectivity: int = defaults.HNSW_CONNECTIVITY
    expansion_add: int = defaults.HNSW_EXPANSION_ADD
    expansion_search: int = defaults.HNSW_EXPANSION_SEARCH
    dtype: str = defaults.HNSW_DTYPE
    rerank_factor: int = defaults.HNSW_RERANK  # candidates fetched per result, re-scored exactly


class HnswIndex:
    def __init__(self, dimension: int, settings: HnswSettings, index: Any = None, seq: int = -1) -> None:
        from usearch.index import Index

        self.settings = settings
        self._index = index or Index(
            ndim=dimension,
            metric="ip",  # vectors are unit length: inner product is cosine, and much faster than "cos"
            dtype=settings.dtype,
            connectivity=settings.connectivity,
            expansion_add=settings.expansion_add,
            expansion_search=settings.expansion_search,
        )
        self._lock = threading.Lock()
        self.ready = index is not None
        self.seq = seq  # last log record whose mutations the graph has seen
        self.loaded = index is not None

    def __len__(self) -> int:
        return len(self._index)

    @property
    def dtype(self) -> str:
        return str(self._index.dtype).rsplit(".", 1)[-1].lower()

    def configure(self, settings: HnswSettings) -> None:
        """Search-time settings of a loaded graph (its degree and storage are fixed in the file)."""
        self.settings = settings
        self._index.expansion_search = settings.expansion_search
        self._index.expansion_add = settings.expansion_add

    def add(self, ids: np.ndarray, vectors: np.ndarray, seq: int | None = None, threads: int = 1) -> None:
        """Adds keys the graph does not hold yet (a replayed add is a no-op); ``threads`` for bulk builds."""
        with self._lock:
            if len(ids):
                keys = np.asarray(ids, np.uint64)
                new = ~np.asarray(self._index.contains(keys), bool).reshape(-1)
                if new.any():
                    self._index.add(keys[new], np.ascontiguousarray(vectors[new]), threads=threads)
            if seq is not None:
                self.seq = max(self.seq, seq)

    def remove(self, ids: list[int], seq: int | None = None) -> None:
        with self._lock:
            for key in ids:
                if self._index.contains(key):
                    self._index.remove(key)
            if seq is not None:
                self.seq = max(self.seq, seq)

    def candidates(self, query: np.ndarray, count: int) -> np.ndarray:
        """Ids of about ``count`` approximate nearest neighbours."""
        with self._lock:
            matches = self._index.search(query, count, threads=1)  # one query: no pool dispatch
        return np.asarray(matches.keys, dtype=np.int64)

    def candidates_many(self, queries: np.ndarray, count: int, threads: int = 0) -> np.ndarray:
        """Ids of about ``count`` neighbours of each query, ``[m, count]``, -1 where the graph gave fewer."""
        with self._lock:
            matches = self._index.search(np.ascontiguousarray(queries, np.float32), count, threads=threads)
        keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)
        counts = np.asarray(matches.counts, dtype=np.int64).reshape(-1)
        out = np.full((len(queries), count), -1, np.int64)
        width = min(count, keys.shape[1])
        valid = np.arange(width)[None, :] < counts[:, None]
        out[:, :width] = np.where(valid, keys[:, :width], -1)
        return out

    def save(self, path: str | None = None) -> tuple[Any, int]:
        """The graph as bytes (or written to ``path``), and the ``seq`` it reflects; mutations wait meanwhile."""
        with self._lock:
            if path is not None:
                self._index.save(path)
                return None, self.seq
            return self._index.save(), self.seq

    @classmethod
    def load(cls, buffer: Any, settings: HnswSettings, seq: int) -> HnswIndex:
        """A saved graph, ready at once (a copy in memory: later deletes and upserts go into it)."""
        from usearch.index import Index

        meta = Index.metadata(buffer)
        if meta is None:
            raise ValueError("not a usearch index")
        index = Index(ndim=int(meta["dimensions"]), metric="ip", dtype=meta["kind_scalar"],
                      connectivity=settings.connectivity)  # fmt: skip
        index.load(buffer)
        graph = cls(int(meta["dimensions"]), settings, index=index, seq=seq)
        graph.configure(settings)
        return graph
