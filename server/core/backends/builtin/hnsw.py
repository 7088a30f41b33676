"""The approximate tier: an HNSW graph over a database's live rows, keyed by stable image ids.

The graph is usearch's (its C++ headers vendored in ext/third_party, driven by the native
module: ``lookalike._native.HnswGraph``), with the native distance kernels. One search is one
native call with the GIL released: graph search, candidates mapped to rows and checked against
the live mask, exact re-rank from the stored rows (so scores are true cosines and a retired
row is never returned). Deletes and upserts are removed from the graph at once. The graph is
built in the background; until it is ready the exact tier answers.

Files are usearch's own format (graphs the Python ``usearch`` package saved load as they are).
The graph is saved with the database's snapshots and loaded at start-up instead of being
rebuilt. Mutations are idempotent (image ids are never reused; adding a key the graph holds
is skipped, removing one it lacks is a no-op), so replaying the log from the snapshot brings a
graph saved at any later point of that log to the same state. ``seq`` (the last command the
graph has seen) tells start-up when a saved graph is ahead of the log that survived; then it
is dropped and rebuilt.

A saved graph is read, verified and loaded on a thread of its own (``HnswIndex.loading``): start-up
does not wait for it (at 1M images it is a 0.6 GB file and 1.8 s of loading; at 10M, ten times
that), and the exact tier answers until it is in. The deletes and upserts that arrive meanwhile
(the log replay, then new writes) are kept and applied to it before it answers, and a snapshot
taken meanwhile waits for it, so the graph it saves has seen every write before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from lookalike.server import defaults

from lookalike import native

log = logging.getLogger(__name__)


PENDING_UNDER_LOCK = 4096  # writes kept during a load applied with writers waiting; more go in before, unlocked


def _apply(index: Any, batch: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
    """Kept writes, in order: (ids, None) removes, (ids, vectors) adds (adds of keys it holds are no-ops)."""
    for ids, vectors in batch:
        if vectors is None:
            index.remove(ids)
        elif len(ids):
            index.add(ids, vectors, threads=max(1, native.get_threads()))


@dataclass(frozen=True)
class HnswSettings:
    threshold: int = defaults.HNSW_THRESHOLD  # live images from which a database gets a graph; 0 = never
    connectivity: int = defaults.HNSW_CONNECTIVITY
    expansion_add: int = defaults.HNSW_EXPANSION_ADD
    expansion_search: int = defaults.HNSW_EXPANSION_SEARCH
    dtype: str = defaults.HNSW_DTYPE
    rerank_factor: int = defaults.HNSW_RERANK  # candidates fetched per result, re-scored exactly


class HnswIndex:
    """A graph plus the log position it reflects. Searches run concurrently in the native code
    (a reader lock there); mutations and saves hold ``_lock`` here so ``seq`` matches the graph."""

    def __init__(
        self, dimension: int, settings: HnswSettings, index: Any = None, seq: int = -1, *, loading: bool = False
    ) -> None:
        self.settings = settings
        self.dimension = dimension
        self.ready = index is not None  # a graph given (loaded) answers; a new one is built first
        if index is None and not loading:  # metric: inner product (vectors are unit length: the cosine)
            index = native.HnswGraph(
                dimension, settings.dtype, settings.connectivity, settings.expansion_add, settings.expansion_search
            )
        self.graph = index  # None while a saved graph loads
        self._lock = threading.Lock()
        self.seq = seq  # last log record whose mutations the graph has seen
        self.loaded = self.ready or loading  # read from a snapshot: start-up checks it once
        # While a saved graph loads: the mutations it has yet to see, in order; why the load failed
        self._pending: list[tuple[np.ndarray, np.ndarray | None]] | None = [] if loading else None
        self.failed = ""
        self._settled = threading.Event()
        self._on_settled: list[Callable[[], None]] | None = [] if loading else None  # None: settled
        if not loading:
            self._settled.set()
        self.stopping = threading.Event()  # a build in the background stops at its next step
        self._builder: threading.Thread | None = None

    @classmethod
    def loading(cls, dimension: int, settings: HnswSettings, seq: int, read: Callable[[], Any], name: str) -> HnswIndex:
        """A saved graph that ``read`` (the file's bytes, verified) gives, loaded on a thread; not ready until then."""
        graph = cls(dimension, settings, seq=seq, loading=True)
        threading.Thread(target=graph._load, args=(read, name), name=f"hnsw-load-{name}", daemon=True).start()
        return graph

    def _load(self, read: Callable[[], Any], name: str) -> None:
        started = time.monotonic()
        try:
            index = native.HnswGraph.load(read())
            if int(index.dimensions) != self.dimension:
                raise ValueError(f"it holds {int(index.dimensions)}-dimensional vectors, the database {self.dimension}")
        except Exception as exc:  # any failure must settle: the exact tier answers, the graph is rebuilt
            with self._lock:
                self.failed = str(exc) or type(exc).__name__
                self._pending = None
            if self.stopping.is_set():  # its database was dropped meanwhile (and its files with it)
                log.info("the HNSW graph of %r stopped loading: the database was dropped", name)
            else:
                log.warning("the HNSW graph of %r is unreadable (%s); it is rebuilt in the background", name,
                            self.failed)  # fmt: skip
        else:
            images, kept = len(index), 0
            while True:  # the writes kept meanwhile, oldest first; the last few under the lock, so none is missed
                with self._lock:
                    batch, self._pending = self._pending or [], []
                    kept += len(batch)
                    if sum(len(ids) for ids, _ in batch) <= PENDING_UNDER_LOCK:
                        _apply(index, batch)
                        self._pending = None
                        index.set_expansion(add=self.settings.expansion_add, search=self.settings.expansion_search)
                        self.graph, self.ready = index, True
                        break
                _apply(index, batch)  # many (a bulk load during a long load): writes and searches go on meanwhile
            log.info("HNSW graph of %r loaded: %d images in %.1fs, then %d writes made meanwhile", name, images,
                     time.monotonic() - started, kept)  # fmt: skip
        with self._lock:
            callbacks, self._on_settled = self._on_settled, None
        for fn in callbacks or []:
            fn()
        self._settled.set()  # after the callbacks: a waiter sees what they did (a failed graph replaced)

    @property
    def settling(self) -> bool:
        """True while a saved graph is still loading."""
        return not self._settled.is_set()

    def when_settled(self, fn: Callable[[], None]) -> bool:
        """Call ``fn`` (on the loading thread) once the load has ended; False if it already had (nothing kept)."""
        with self._lock:
            if self._on_settled is None:
                return False
            self._on_settled.append(fn)
            return True

    def wait_settled(self, timeout: float | None = None) -> bool:
        """Wait for a load to end; True if the graph is ready (loaded or built), False if it failed or is not."""
        self._settled.wait(timeout)
        return self.ready

    def build_in_background(
        self, batches: Iterator[tuple[np.ndarray, np.ndarray]], threads: int, finish: Callable[[], None], name: str
    ) -> None:
        """Add ``batches`` (ids, vectors) on a thread, then call ``finish``; ``stop_building`` stops it between
        batches (``batches`` itself ends early when its database no longer wants the graph)."""

        def run() -> None:
            while not self.stopping.is_set():  # checked before the next batch's rows are copied
                batch = next(batches, None)
                if batch is None:
                    finish()
                    return
                self.add(*batch, threads=threads)

        self._builder = threading.Thread(target=run, name=f"hnsw-{name}", daemon=True)
        self._builder.start()

    def stop_building(self, wait: bool = True) -> None:
        """Stop a build at its next step and (``wait``) until it has left the native code: a process that exits
        under it aborts (std::terminate). The graph stays not ready: no snapshot saves it, the next start builds it.
        Without ``wait``: its database was dropped (a load still running then ends quietly)."""
        self.stopping.set()
        builder = self._builder
        if wait and builder is not None and builder is not threading.current_thread():
            builder.join()

    def __len__(self) -> int:
        return len(self.graph) if self.graph is not None else 0

    @property
    def dtype(self) -> str:
        """The graph's vector storage (a graph still loading: the settings', until it is in)."""
        return str(self.graph.dtype) if self.graph is not None else self.settings.dtype

    def configure(self, settings: HnswSettings) -> None:
        """Search-time settings of a loaded graph (its degree and storage are fixed in the file)."""
        with self._lock:
            self.settings = settings
            if self.graph is not None:
                self.graph.set_expansion(add=settings.expansion_add, search=settings.expansion_search)

    def add(self, ids: np.ndarray, vectors: np.ndarray, seq: int | None = None, threads: int = 1) -> None:
        """Adds keys the graph does not hold yet (a replayed add is a no-op); ``threads`` for bulk builds."""
        with self._lock:
            if self._pending is not None:  # loading: applied when the graph is in
                self._pending.append((np.array(ids, np.int64), np.array(vectors, np.float32)))
            elif len(ids):
                self.graph.add(np.asarray(ids, np.int64), np.ascontiguousarray(vectors, np.float32), threads=threads)
            if seq is not None:
                self.seq = max(self.seq, seq)

    def remove(self, ids: list[int], seq: int | None = None) -> None:
        with self._lock:
            if ids and self._pending is not None:
                self._pending.append((np.asarray(ids, np.int64), None))
            elif ids:
                self.graph.remove(np.asarray(ids, np.int64))
            if seq is not None:
                self.seq = max(self.seq, seq)

    def candidates(self, query: np.ndarray, count: int) -> np.ndarray:
        """Ids of about ``count`` approximate nearest neighbours."""
        return self.graph.search(np.ascontiguousarray(query, np.float32), count)

    def candidates_many(self, queries: np.ndarray, count: int, threads: int = 0) -> np.ndarray:
        """Ids of about ``count`` neighbours of each query, ``[m, count]``, -1 where the graph gave fewer."""
        return self.graph.search_many(np.ascontiguousarray(queries, np.float32), count, threads=threads)

    def search(
        self, query: np.ndarray, k: int, count: int, rows: list[np.ndarray], n: int, ids: np.ndarray, live: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of ``count`` graph candidates, in one native call: ids mapped to rows by
        ``ids`` (ascending, the row's image id), rows whose ``live`` byte is 0 dropped, the rest
        scored exactly from ``rows`` (chunks of f32/f16/bf16 rows; the first ``n`` count).
        Returns (scores, rows), best first, ties by lower row."""
        return self.graph.search_reranked(np.ascontiguousarray(query, np.float32), k, count, rows, n, ids, live)

    def search_many(
        self,
        queries: np.ndarray,
        k: int,
        count: int,
        rows: list[np.ndarray],
        n: int,
        ids: np.ndarray,
        live: np.ndarray,
        threads: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``search`` for each of ``queries`` on the native pool: ``[m, k]`` padded with -inf / -1."""
        q = np.ascontiguousarray(queries, np.float32)
        return self.graph.search_reranked_many(q, k, count, rows, n, ids, live, threads=threads)

    def save(self, path: str | None = None) -> tuple[Any, int]:
        """The graph as bytes (or written to ``path``), and the ``seq`` it reflects; mutations wait meanwhile."""
        with self._lock:
            if path is not None:
                self.graph.save_file(path)
                return None, self.seq
            return self.graph.save(), self.seq

    @classmethod
    def load(cls, buffer: Any, settings: HnswSettings, seq: int) -> HnswIndex:
        """A saved graph, ready at once (a copy in memory: later deletes and upserts go into it).
        Raises ValueError for bytes that are not a usable usearch inner-product graph."""
        try:
            index = native.HnswGraph.load(buffer)
        except RuntimeError as exc:
            raise ValueError(str(exc)) from exc
        graph = cls(int(index.dimensions), settings, index=index, seq=seq)
        graph.configure(settings)
        return graph
