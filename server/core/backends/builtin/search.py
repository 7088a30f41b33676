"""Search over one database: the exact scan with a row mask, filters, and the HNSW tier.

A mixin of ``Database``: it reads the record store under the database lock, then searches
outside it on a pinned, immutable picture of the rows (chunks below ``n`` never change).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
from lookalike.server.core.backends.api import Hit, Key
from lookalike.server.core.backends.builtin.filters import mask_of
from lookalike.server.core.backends.builtin.hnsw import HnswIndex
from lookalike.server.core.backends.builtin.index import Pinned
from lookalike.server.core.backends.builtin.memory import release_free_memory

from lookalike import native

BUILD_STEP = 8192  # rows a background graph build adds between checks for a clear or a close

SUBSET_ROWS = 65536  # a filter keeping at most this many rows (and at most 1/SUBSET_SHARE of all)...
SUBSET_SHARE = 16  # ...is answered by scoring those rows alone, not by a scan of every row
SUBSET_BLOCK = 8192  # rows scored at a time there (scratch of 12 MiB at d=384)
FILTER_CANDIDATES = 4096  # most graph candidates a filtered HNSW search fetches; beyond, the exact scan


class DatabaseSearch:
    """Top-k over the live rows; the graph tier above a size; the filter mask."""

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
        Under the lock only references are taken (the filter columns, the live mask, the pinned
        rows); the mask is computed and the search runs outside it, so writers never wait for
        a search. Plain top-k on a database with a ready HNSW graph goes there (candidates
        re-ranked exactly); a filter goes there too unless it keeps few rows (those are scored
        directly) or the graph's candidates hold fewer than k passing rows (then the exact scan
        with the mask answers). Returns (hits, images compared, index).
        """
        if where:  # the first filter on a key builds its column (outside the lock)
            self._filters.ensure(where, self.lock, lambda: (self._attrs, self._intra.n))
        with self.lock:
            n = self._intra.n
            live = self._live[:n]
            searched = total = self._size
            terms = self._filters.terms(where, n) if where else []
            names, named = self._groups.names, len(self._groups.names)
            excluded = None
            if exclude is not None:
                g = self._groups.number.get(exclude[0])
                excluded = self._groups.members.get(g, exclude[1]) if g is not None else None
            group_rows = self._group_flat[:n]  # a view: rows below n never change
            attrs, intra_rows, index_rows = self._attrs, self._intra, self.index.pin()
            graph = self.hnsw if self.hnsw is not None and self.hnsw.ready and not one_per_group else None
            ids_flat = self._ids_flat[:n]
        if terms is None:  # a value no row holds
            return [], 0, "exact"
        filtered = bool(where or group_prefix)
        if filtered:
            live = filter_mask(live, terms, group_prefix, names[:named], group_rows)
            searched = int(np.count_nonzero(live))
        if excluded is not None and live[excluded]:
            live = live.copy() if not filtered else live  # never change the database's own mask
            live[excluded] = 0
            searched -= 1
        if searched <= 0:
            return [], 0, "exact"
        k = min(top_k, searched)
        groups = group_rows if one_per_group else None
        tier, found = "exact", None
        if filtered and searched <= min(SUBSET_ROWS, n // SUBSET_SHARE):
            found = self._subset_search(query, k, live, groups, index_rows)
        elif graph is not None:
            want = max(k * graph.settings.rerank_factor, k + 16)
            if filtered:  # as many more candidates as the filter drops
                want = -(-want * total // searched)
            if want <= FILTER_CANDIDATES or not filtered:
                found = self._graph_search(graph, query, k, want, live, ids_flat, index_rows)
                tier = "hnsw"
                if filtered and len(found[1]) < k:
                    found, tier = None, "exact"
        scores, rows = found if found is not None else self.index.search(query, k, live, n, groups, rows=index_rows)
        hits = []
        row_list = rows.tolist()
        group_of, intra_of = group_rows[rows].tolist(), intra_rows.items(row_list)  # one gather each
        for score, row, g, intra in zip(scores.tolist(), row_list, group_of, intra_of, strict=True):
            if min_score is not None and score < min_score:
                break
            found_attrs = attrs.get(row) if with_attributes and attrs else None
            hits.append(Hit(names[g], intra, score, dict(found_attrs) if found_attrs else None))
        return hits, searched, tier

    def _subset_search(
        self, query: np.ndarray, k: int, mask: np.ndarray, groups: np.ndarray | None, pinned: Pinned
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of the few rows a filter keeps, scored directly (exact, as the scan would: i8 from
        the float32 copy): reading them costs a fraction of scanning every row."""
        rows = np.flatnonzero(mask)
        scores = np.empty(len(rows), np.float32)
        for a in range(0, len(rows), SUBSET_BLOCK):  # bounded scratch per search
            scores[a : a + SUBSET_BLOCK] = self.index.take(rows[a : a + SUBSET_BLOCK], pinned) @ query
        if groups is None and len(scores) > 4 * k:  # the best k (ties at the edge kept), then ordered
            edge = np.partition(scores, len(scores) - k)[len(scores) - k]
            keep = scores >= edge
            rows, scores = rows[keep], scores[keep]
        order = np.lexsort((rows, -scores))  # best first, ties by lower row, as the kernel orders them
        if groups is not None:
            _, first = np.unique(groups[rows[order]], return_index=True)
            order = order[np.sort(first)]
        order = order[:k]
        return scores[order], rows[order]

    @staticmethod
    def _graph_search(
        graph: HnswIndex,
        query: np.ndarray,
        k: int,
        count: int,
        live: np.ndarray,
        ids_flat: np.ndarray,
        rows: Pinned,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``count`` HNSW candidates, checked against the mask, re-scored exactly from the rows (the
        float32 copy for i8): one native call, the GIL released."""
        return graph.search(query, k, count, graph_rows(rows), len(ids_flat), ids_flat, live)

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
            elif loaded.when_settled(partial(self._graph_settled, loaded)):
                return  # still loading: checked again once it is in (its file gives the dtype)
            elif loaded.failed:
                self.hnsw = loaded = None  # its load said why
            elif loaded.dtype != s.dtype:
                why = f"it stores {loaded.dtype}, the settings say {s.dtype}"
            if why:
                logging.getLogger(__name__).warning("HNSW graph of %r dropped (%s); rebuilding", self.name, why)
                self.hnsw = None
            elif loaded is not None:
                loaded.loaded = False  # checked once, at start-up
        if s is None or s.threshold <= 0 or self.hnsw is not None or self._size < s.threshold:
            return
        graph = HnswIndex(self.dimension, s)
        graph.seq = self.applied_seq
        self.hnsw = graph
        n = self._intra.n
        rows = np.flatnonzero(self._live[:n])
        ids = self._ids_flat[rows].copy()
        index_rows = self.index.pin()
        index = self.index

        threads = max(1, native.get_threads())
        started = time.monotonic()

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for start in range(0, len(rows), BUILD_STEP):
                if self.hnsw is not graph:
                    return  # cleared meanwhile
                part = rows[start : start + BUILD_STEP]
                yield ids[start : start + BUILD_STEP], index.take_stored(part, index_rows)

        def finish() -> None:
            if self.hnsw is not graph:
                return
            with self.lock:
                graph.ready = True
                self.snapshot_seq = -1  # the next snapshot saves the graph with the rows
            release_free_memory()  # the build's scratch (float32 copies of every batch) goes back
            logging.getLogger(__name__).info("HNSW graph of %r ready: %d images in %.1fs", self.name, len(rows),
                                             time.monotonic() - started)  # fmt: skip

        # the build shares the kernel's thread budget (the server's --threads setting)
        graph.build_in_background(batches(), threads, finish, self.name)

    def _graph_settled(self, graph: HnswIndex) -> None:
        """A graph loading at start-up is in (or failed): check it as start-up would have."""
        with self.lock:
            if self.hnsw is graph:
                self._maybe_build_graph()


def graph_rows(pinned: Pinned) -> list[np.ndarray]:
    """The chunks a graph search re-scores from: f32/f16/bf16 rows, or an i8 database's float32 copy."""
    return (pinned.full if pinned.full is not None else pinned.vectors).chunks


def filter_mask(
    live: np.ndarray, terms: list[tuple[np.ndarray, int]], group_prefix: str, names: list[str], group_rows: np.ndarray
) -> np.ndarray:
    """Live rows whose attribute codes match ``terms`` and whose group starts with ``group_prefix``:
    vectorised over rows, and per group (not per row) for the prefix."""
    mask = mask_of(terms, live)
    if group_prefix:
        chosen = np.zeros(len(names) + 1, bool)
        chosen[[g for g, name in enumerate(names) if name.startswith(group_prefix)]] = True
        mask &= chosen[group_rows]
    return mask
