"""The self-join of a database, a block at a time: every pair of live images at or above a threshold.

A mixin of ``Database`` for the duplicate finder (``core/dedup/``). Work is addressed by image
id, not row: ids are stable and rows stay in id order (appends take the next id, compaction
keeps the order), so a job's position survives compactions and restarts. A job compares the
images that existed when it started (ids below ``end_id``); each block of query rows is scored
against every later row of that scope (the upper triangle, so each pair is found once) by one
native call on a pinned picture of the rows, outside the database lock: writers and searches
never wait for a block. Images deleted meanwhile are masked out of later blocks; pairs an earlier
block found with them are dropped when the result is read (``describe_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from lookalike.server.core.backends.api import Key

from lookalike import native

I8_MARGIN = 0.02  # int8 scores are within this of the exact cosine: candidates are re-scored from float32
MAX_BLOCK_PAIRS = 20_000_000  # pairs one block may return (240 MB); beyond, the threshold is too low to be useful


@dataclass(frozen=True)
class JoinBlock:
    """The pairs one block found (image ids, a < b) and where the job stands after it."""

    ids_a: np.ndarray
    ids_b: np.ndarray
    scores: np.ndarray
    next_id: int  # the first image id not compared yet; ``end_id`` when the scope is done
    done_rows: int  # rows of the scope before ``next_id``
    scope_rows: int  # rows of the scope (ids below end_id, live or retired since)
    compared: int  # row pairs this block scored (its work)


@dataclass(frozen=True)
class IdRecords:
    """What the result needs of images named by id: ``keys[i]`` is None for an image gone since."""

    keys: list[Key | None]
    times: np.ndarray
    attributes: list[dict[str, str]]


def _empty(next_id: int, done: int, scope: int) -> JoinBlock:
    z = np.zeros(0, np.int64)
    return JoinBlock(z, z, np.zeros(0, np.float32), next_id, done, scope, 0)


def _rows_of(ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """Row of each image id (rows are in id order), -1 for an id no row holds."""
    want = np.asarray(image_ids, np.int64)
    if len(ids) == 0:
        return np.full(len(want), -1, np.int64)
    rows = np.minimum(np.searchsorted(ids, want), len(ids) - 1)
    return np.where(ids[rows] == want, rows, -1).astype(np.int64)


class DatabaseJoin:
    """Blocks of the self-join, and the records of the images its pairs name."""

    def join_scope(self) -> tuple[int, int]:
        """(end_id, live images): a job started now compares the images with ids below ``end_id``."""
        with self.lock:  # type: ignore[attr-defined]
            return int(self.next_image_id), int(self._size)  # type: ignore[attr-defined]

    def _pin_rows(self, end_id: int) -> tuple[int, np.ndarray, np.ndarray, object]:
        with self.lock:  # type: ignore[attr-defined]
            n = self._intra.n  # type: ignore[attr-defined]
            live, ids, pinned = self._live[:n], self._ids_flat[:n], self.index.pin()  # type: ignore[attr-defined]
        return int(np.searchsorted(ids, end_id)), live, ids, pinned

    def join_block(self, next_id: int, end_id: int, block_rows: int, threshold: float, threads: int = 0) -> JoinBlock:
        """Pairs of the query rows from ``next_id`` (up to ``block_rows`` of them) with every later row of the scope."""
        scope, live, ids, pinned = self._pin_rows(end_id)
        r0 = int(np.searchsorted(ids, next_id))
        if r0 >= scope:
            return _empty(end_id, scope, scope)
        r1 = min(r0 + block_rows, scope)
        rows = np.arange(r0, r1, dtype=np.int64)
        index = self.index  # type: ignore[attr-defined]
        queries = np.ascontiguousarray(index.take(rows, pinned), np.float32)
        min_row = np.where(live[r0:r1] != 0, rows, scope).astype(np.int64)  # a retired query row finds nothing
        quantized = pinned.scales is not None  # type: ignore[attr-defined]
        qi, found, scores = native.range_join(
            pinned.vectors.views(scope),  # type: ignore[attr-defined]
            queries,
            threshold - I8_MARGIN if quantized else threshold,
            n=scope,
            live=live[:scope],
            min_row=min_row,
            max_pairs=MAX_BLOCK_PAIRS,
            threads=threads,
            scales=pinned.scales.views(scope) if quantized else None,  # type: ignore[attr-defined]
        )
        if quantized and len(found):  # exact cosines from the float32 copy
            scores = np.einsum("ij,ij->i", queries[qi], index.take(found, pinned)).astype(np.float32)
            keep = scores >= threshold
            qi, found, scores = qi[keep], found[keep], scores[keep]
        compared = int((r1 - r0) * scope - (r0 + r1 - 1) * (r1 - r0) // 2 - (r1 - r0))
        after = int(ids[r1]) if r1 < scope else end_id
        return JoinBlock(ids[r0 + qi], ids[found], scores, after, r1, scope, max(compared, 0))

    def graph_block(
        self, next_id: int, end_id: int, block_rows: int, threshold: float, neighbours: int, threads: int = 0
    ) -> JoinBlock:
        """As ``join_block``, from each query row's ``neighbours`` HNSW candidates instead of every later row.

        A pair is kept once, from whichever side finds it (a < b by id); scores are exact cosines.
        Without a ready graph the block falls back to the exact join.
        """
        graph = self.hnsw  # type: ignore[attr-defined]
        if graph is None or not graph.ready:
            return self.join_block(next_id, end_id, block_rows, threshold, threads)
        scope, live, ids, pinned = self._pin_rows(end_id)
        r0 = int(np.searchsorted(ids, next_id))
        if r0 >= scope:
            return _empty(end_id, scope, scope)
        r1 = min(r0 + block_rows, scope)
        rows = np.arange(r0, r1, dtype=np.int64)[live[r0:r1] != 0]
        index = self.index  # type: ignore[attr-defined]
        queries = np.ascontiguousarray(index.take(rows, pinned), np.float32)
        cand = graph.candidates_many(queries, neighbours + 1, threads=threads)  # [m, c] ids, -1 where none
        qpos = np.repeat(np.arange(len(rows)), cand.shape[1])
        cids = cand.reshape(-1)
        pos = np.minimum(np.searchsorted(ids[:scope], cids), max(scope - 1, 0))
        ok = (cids >= 0) & (pos < scope) & (ids[pos] == cids) & (live[pos] != 0) & (pos != rows[qpos])
        qpos, pos = qpos[ok], pos[ok]
        scores = np.einsum("ij,ij->i", queries[qpos], index.take(pos, pinned)).astype(np.float32)
        keep = scores >= threshold
        a, b, scores = rows[qpos[keep]], pos[keep], scores[keep]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        pairs, first = np.unique(lo * scope + hi, return_index=True)
        after = int(ids[r1]) if r1 < scope else end_id
        return JoinBlock(ids[pairs // scope], ids[pairs % scope], scores[first], after, r1, scope,
                         len(rows) * cand.shape[1])  # fmt: skip

    def describe_ids(self, image_ids: np.ndarray) -> IdRecords:
        """Keys, times and attributes of images by id; None for one deleted or replaced since."""
        with self.lock:  # type: ignore[attr-defined]
            n = self._intra.n  # type: ignore[attr-defined]
            rows = _rows_of(self._ids_flat[:n], image_ids)  # type: ignore[attr-defined]
            ok = (rows >= 0) & (self._live[np.maximum(rows, 0)] != 0) if n else rows >= 0  # type: ignore[attr-defined]
            found = rows[ok]
            groups = self._group_flat[found].tolist()  # type: ignore[attr-defined]
            intra = self._intra.take(found).tolist()  # type: ignore[attr-defined]
            times = np.zeros(len(rows))
            times[ok] = self._time.take(found)  # type: ignore[attr-defined]
            names, attrs_by_row = self._groups.names, self._attrs  # type: ignore[attr-defined]
            keys: list[Key | None] = [None] * len(rows)
            attrs: list[dict[str, str]] = [{} for _ in range(len(rows))]
            for at, row, g, i in zip(np.flatnonzero(ok).tolist(), found.tolist(), groups, intra, strict=True):
                keys[at] = (names[g], i)
                attrs[at] = dict(attrs_by_row.get(row, {}))
        return IdRecords(keys, times, attrs)

    def vectors_of_ids(self, image_ids: np.ndarray) -> np.ndarray:
        """Float32 vectors of images by id (ids the caller found present with ``describe_ids``)."""
        with self.lock:  # type: ignore[attr-defined]
            n = self._intra.n  # type: ignore[attr-defined]
            ids, pinned = self._ids_flat[:n], self.index.pin()  # type: ignore[attr-defined]
        rows = _rows_of(ids, image_ids)
        return np.ascontiguousarray(self.index.take(rows, pinned), np.float32)  # type: ignore[attr-defined]
