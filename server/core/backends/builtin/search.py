"""Search over one database: the exact scan with a row mask, filters, and the HNSW tier.

A mixin of ``Database``: it reads the record store under the database lock, then searches
outside it on a pinned, immutable picture of the rows (chunks below ``n`` never change).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from lookalike.server.core.backends.api import Hit, Key
from lookalike.server.core.backends.builtin.hnsw import HnswIndex
from lookalike.server.core.backends.builtin.index import ExactIndex, Pinned
from lookalike.server.core.backends.builtin.memory import release_free_memory

from lookalike import native


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
