"""Exact top-k similarity search over embedding matrices, in native code.

``topk(db, queries, k)`` returns, for each query, the ``k`` database rows with the largest
inner product (cosine similarity, since Lookalike stores L2-normalised vectors), best first,
as ``(scores float32, ids int64)``. Ties go to the lower row number; when fewer than ``k``
rows qualify the rest is padding: score ``-inf``, id ``-1`` (the faiss convention).
``range_join(db, queries, threshold)`` returns every (query, row) pair scoring at least the
threshold instead (the kernel of a duplicate search, see its docstring).

Storage: the database may be float32, float16 (half the bytes), bfloat16 (half the bytes;
numpy has no bfloat16, so it is passed as ``uint16`` bit patterns, see ``to_bfloat16``) or
int8 with one float32 scale per row (a quarter of the bytes, see ``quantize_int8``; the row's
value is ``scale * int8``). Queries are always float32. The database may be one 2-D array or a
list of 2-D arrays ("chunks") whose concatenation is the database: ids are global row numbers.

Inputs are never converted silently: arrays must already have a supported dtype and be
C-contiguous (the error message says how to get there), so a large database is never copied
behind your back. The work runs on a persistent pool of C++ threads (``set_threads`` sizes
it once for the process) with the GIL released, using the best SIMD level of the CPU
(``simd_level()``), which ``LOOKALIKE_SIMD=scalar|avx2|avx512`` can cap.

int8 and recall: per-row int8 loses a little precision (a score error of about 1e-3 on unit
vectors). Ask the int8 scan for more candidates than needed and re-score them exactly from a
float32 copy (in memory or memory-mapped) with ``rerank``, or in one call with
``topk_reranked``; ``bench/topk_bench.py`` measures recall@10 of int8 alone and re-ranked.

``HnswGraph`` is the approximate tier's graph: usearch's HNSW (the C++ headers, vendored in
ext/third_party) with these kernels' dispatch, inner product, files in usearch's format; its
``search_reranked`` is one call for graph search + live mask + exact re-rank of the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lookalike import _native
from lookalike._native import HnswGraph

__all__ = [
    "HnswGraph",
    "available_simd_levels",
    "dequantize_int8",
    "from_bfloat16",
    "get_threads",
    "quantize_int8",
    "range_join",
    "rerank",
    "set_threads",
    "simd_level",
    "storage_of",
    "stream_read",
    "to_bfloat16",
    "topk",
    "topk_reranked",
]

Array = npt.NDArray[np.generic]
Db = Array | Sequence[Array]
Result = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
Pairs = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]

_STORAGE = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float16): "f16",
    np.dtype(np.uint16): "bf16",
    np.dtype(np.int8): "i8",
}


_SLICE = 65536  # rows per slice in the conversion helpers


def _as_bits(a: object) -> object:
    """ml_dtypes.bfloat16 arrays are handed over as their uint16 bit patterns (a view, no copy)."""
    if isinstance(a, np.ndarray) and a.dtype.name == "bfloat16":
        return a.view(np.uint16)
    return a


def topk(
    db: Db,
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    n: int | None = None,
    live: npt.NDArray[np.uint8] | npt.NDArray[np.bool_] | None = None,
    groups: npt.NDArray[np.int32] | npt.NDArray[np.int64] | None = None,
    one_per_group: bool = False,
    threads: int = 0,
    simd: str | None = None,
    scales: npt.NDArray[np.float32] | Sequence[npt.NDArray[np.float32]] | None = None,
) -> Result:
    """Exact top-``k`` rows of ``db`` by inner product with each query.

    Args:
        db: ``[rows, d]`` C-contiguous array, or a list/tuple of them (chunks; rows are their
            concatenation, row counts may differ). dtype float32, float16, uint16 (bfloat16
            bit patterns) or int8 (needs ``scales``); all chunks share dtype and ``d``.
        queries: float32 ``[m, d]`` or a single query ``[d]``, C-contiguous.
        k: results per query, ``>= 0``; may exceed the number of rows (then padded).
        n: how many rows are valid: the first ``n`` of the concatenation (the last chunk may be
            partly filled). Default: every row of every chunk.
        live: optional uint8/bool mask with at least ``n`` entries (global row order); rows
            whose byte is 0 (deleted, filtered out) are never returned.
        groups: int32/int64 group id per row (at least ``n`` entries), with ``one_per_group``.
        one_per_group: return the best row of each of the ``k`` best groups (distinct groups,
            best first), in one scan. ``groups[ids]`` gives the groups.
        threads: jobs the work is cut into; 0 = the thread budget (``set_threads``). Results
            do not depend on it.
        simd: force a SIMD level (``"scalar"``, ``"avx2"``, ``"avx512"``); None picks the best.
        scales: int8 only: float32 scale per row, one array over all rows (at least ``n``
            entries) or one array per chunk.

    Returns:
        ``(scores, ids)``: float32 and int64 arrays of shape ``[m, k]``, always 2-D. Row ``i``
        is sorted best first; ids are global row numbers; padding is ``-inf`` / ``-1``.

    Raises:
        TypeError: an input is not a numpy array of a supported dtype.
        ValueError: wrong shape or layout, dimension mismatch, negative ``k`` or ``threads``,
            ``n`` out of range, groups without ``one_per_group`` (or the reverse), or a SIMD
            level this CPU does not run.
    """
    if isinstance(queries, np.ndarray) and queries.ndim == 1:
        queries = queries[np.newaxis, :]
    db = [_as_bits(c) for c in db] if isinstance(db, list | tuple) else _as_bits(db)
    return _native.topk(
        db,
        queries,
        k,
        n=n,
        live=live,
        groups=groups,
        one_per_group=one_per_group,
        threads=threads,
        simd=simd,
        scales=scales,
    )


def range_join(
    db: Db,
    queries: npt.NDArray[np.float32],
    threshold: float,
    *,
    n: int | None = None,
    live: npt.NDArray[np.uint8] | npt.NDArray[np.bool_] | None = None,
    min_row: npt.NDArray[np.int64] | None = None,
    max_pairs: int = 10_000_000,
    threads: int = 0,
    simd: str | None = None,
    scales: npt.NDArray[np.float32] | Sequence[npt.NDArray[np.float32]] | None = None,
    prune: bool = True,
) -> Pairs:
    """Every (query, row) pair whose inner product is at least ``threshold`` (a threshold join).

    The building block of a duplicate search (a self-join): pass a block of the database's own
    rows as ``queries`` and ``min_row = their row numbers``, and each unordered pair comes out
    once (rows above the query's own). Rows at or below ``min_row.min()`` are never read, so a
    block near the end of the database costs only the rows after it.

    Args:
        db, n, live, threads, simd, scales: as in ``topk`` (storage types, chunks, the valid
            rows, the mask of live rows, jobs, SIMD level, int8 scales).
        queries: float32 ``[m, d]`` or a single query ``[d]``, C-contiguous.
        threshold: a finite float; pairs scoring ``>= threshold`` are returned (NaN scores never).
        min_row: optional int64 ``[m]``: only rows ``> min_row[i]`` are reported for query ``i``
            (a negative value: every row).
        max_pairs: the most pairs one call may return; more raise ``ValueError`` with the count
            (raise the threshold or pass fewer queries per call). Memory stays bounded meanwhile.
        prune: skip the rest of a tile of pairs once none of them can reach the threshold (a
            Cauchy-Schwarz bound on the dimensions not yet summed, with a margin for float
            rounding). Exact: the result is the same with ``False``, which scores every pair in
            full (the dense rate). How much it saves depends on the data: most on unrelated rows
            and a high threshold, nothing when most pairs score near the threshold.

    Returns:
        ``(query_idx, rows, scores)``: int64, int64, float32 arrays of the same length, sorted
        by query index, then row. ``query_idx`` indexes ``queries``; ``rows`` are global row
        numbers. Scores are float32 dot products summed in one fixed order (they may differ from
        ``topk``'s in the last bits; int8: ``<q, scale * row>``, an approximation, re-score the
        pairs that matter from a float32 copy); results do not depend on ``threads``, chunking,
        ``prune`` or the other queries of the call.

    Raises:
        TypeError: an input is not a numpy array of a supported dtype.
        ValueError: wrong shape or layout, dimension mismatch, a non-finite threshold,
            ``min_row`` not one int64 per query, negative ``threads`` / ``max_pairs``, ``n`` out
            of range, an unsupported SIMD level, or more than ``max_pairs`` qualifying pairs.
    """
    if isinstance(queries, np.ndarray) and queries.ndim == 1:
        queries = queries[np.newaxis, :]
    db = [_as_bits(c) for c in db] if isinstance(db, list | tuple) else _as_bits(db)
    return _native.range_join(
        db,
        queries,
        threshold,
        n=n,
        live=live,
        min_row=min_row,
        max_pairs=max_pairs,
        threads=threads,
        simd=simd,
        scales=scales,
        prune=prune,
    )


def storage_of(db: Db) -> str:
    """``"f32"``, ``"f16"``, ``"bf16"`` or ``"i8"``: the storage type ``topk`` sees in ``db``."""
    first = db[0] if isinstance(db, list | tuple) else db
    first = _as_bits(first)
    if not isinstance(first, np.ndarray) or first.dtype not in _STORAGE:
        raise TypeError(f"not a storage type: {getattr(first, 'dtype', type(first).__name__)}")
    return _STORAGE[first.dtype]


def quantize_int8(vectors: npt.ArrayLike) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Per-row symmetric int8: ``vectors[r] ~= scales[r] * q[r]``, ``scales[r] = max|row| / 127``.

    A row of zeros gets scale 0 (it scores 0). Returns ``(q int8 [n, d], scales float32 [n])``.
    Works in slices of rows, so temporary memory stays small for any database size.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D [rows, dim], got shape {x.shape}")
    q = np.empty(x.shape, np.int8)
    scales = np.zeros(x.shape[0], np.float32)
    if x.shape[1] == 0:
        return q, scales
    for a in range(0, x.shape[0], _SLICE):
        part = x[a : a + _SLICE]
        s = (np.abs(part).max(axis=1) / np.float32(127.0)).astype(np.float32)
        scales[a : a + _SLICE] = s
        safe = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)
        q[a : a + _SLICE] = np.clip(np.rint(part / safe[:, None]), -127, 127)
    return q, scales


def dequantize_int8(q: npt.NDArray[np.int8], scales: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The float32 values an int8 database stands for (what ``topk`` scores against)."""
    return (q.astype(np.float32) * np.asarray(scales, dtype=np.float32)[:, None]).astype(np.float32)


def to_bfloat16(vectors: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even; NaN stays NaN.

    Works in slices of rows (bounded temporary memory)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty(x.shape, np.uint16)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    step = _SLICE * 512
    for a in range(0, flat_in.size, step):
        bits = flat_in[a : a + step].view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        flat_out[a : a + step] = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded)
    return out


def from_bfloat16(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def rerank(full: Db, queries: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], k: int) -> Result:
    """Re-scores candidate ids exactly against float32 rows and keeps the best ``k`` per query.

    ``full`` is the float32 copy (an array, a ``np.memmap`` or a list of chunks with the same
    global row numbering as the scanned database); only the candidate rows are read. ``ids``
    is ``[m, c]`` as returned by ``topk`` (``-1`` padding is skipped). Same order and padding
    as ``topk``: best first, ties by lower id.
    """
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    ids = np.atleast_2d(ids)
    chunks = list(full) if isinstance(full, list | tuple) else [full]
    starts = np.cumsum([0] + [c.shape[0] for c in chunks])
    out_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for i in range(q.shape[0]):
        cand = ids[i][ids[i] >= 0]
        if cand.size == 0:
            continue
        which = np.searchsorted(starts, cand, side="right") - 1
        rows = np.empty((cand.size, q.shape[1]), dtype=np.float32)
        for c in np.unique(which):
            sel = which == c
            rows[sel] = chunks[c][cand[sel] - starts[c]]
        scores = rows @ q[i]
        order = np.lexsort((cand, -scores))[:k]
        out_s[i, : order.size] = scores[order]
        out_i[i, : order.size] = cand[order]
    return out_s, out_i


def topk_reranked(
    db: Db,
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    full: Db,
    candidates: int | None = None,
    **options: object,
) -> Result:
    """``topk`` over a compact database (f16/bf16/int8), then ``rerank`` of the best candidates.

    ``candidates`` (default ``4 * k``) rows per query come from the compact scan; their exact
    float32 scores from ``full`` decide the final ``k``. Other keyword arguments go to ``topk``.
    With one-per-group search the candidates are already one per group.
    """
    c = max(k, candidates if candidates is not None else 4 * k)
    _, ids = topk(db, queries, c, **options)  # type: ignore[arg-type]
    return rerank(full, queries, ids, k)


def stream_read(array: Array, *, threads: int = 0, simd: str | None = None) -> int:
    """Reads every byte of ``array`` once on the thread pool: time it for the bandwidth ceiling."""
    return _native.stream_read(array, threads=threads, simd=simd)


def set_threads(n: int) -> None:
    """Sets the process's thread budget for the kernels (0 = one per hardware thread).

    The pool keeps ``n - 1`` workers (the calling thread is the n-th); calls with
    ``threads=0`` cut their work into ``n`` jobs. Call it once at start-up (e.g. from the
    server's settings) so the kernel shares the machine with gRPC, torch and decode pools.
    """
    _native.set_threads(n)


def get_threads() -> int:
    """The current thread budget (see ``set_threads``)."""
    return _native.get_threads()


def simd_level() -> str:
    """SIMD level used when a call names none: ``"scalar"``, ``"avx2"`` or ``"avx512"``."""
    return _native.simd_level()


def available_simd_levels() -> list[str]:
    """SIMD levels this CPU runs, lowest first (``"scalar"`` is always there)."""
    return _native.available_simd_levels()
