"""Exact top-k similarity search over embedding matrices, in native code.

``topk(db, queries, k)`` returns, for each query, the ``k`` database rows with the largest
inner product (cosine similarity, since Lookalike stores L2-normalised vectors), best first,
as ``(scores float32, ids int64)``. Ties go to the lower row number; when fewer than ``k``
live rows exist the rest is padding: score ``-inf``, id ``-1`` (the faiss convention).

Inputs are never converted silently: ``db`` and ``queries`` must already be float32 and
C-contiguous (the error message says how to get there), so a large database is never copied
behind your back. The work runs in C++ threads with the GIL released, using the best SIMD
level of the CPU (``simd_level()``), which ``LOOKALIKE_SIMD=scalar|avx2|avx512`` can cap.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lookalike import _native

__all__ = ["available_simd_levels", "simd_level", "topk"]


def topk(
    db: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    live: npt.NDArray[np.uint8] | npt.NDArray[np.bool_] | None = None,
    threads: int = 0,
    simd: str | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Exact top-``k`` rows of ``db`` by inner product with each query.

    Args:
        db: float32 ``[n, d]``, C-contiguous; may have ``n == 0``.
        queries: float32 ``[m, d]`` or a single query ``[d]``, C-contiguous.
        k: number of results per query, ``>= 0``; may exceed ``n`` (then padded).
        live: optional mask of ``n`` bytes (uint8 or bool); rows whose byte is 0 (tombstoned
            deletions) are never returned.
        threads: worker threads; 0 uses every core. Results do not depend on it.
        simd: force a SIMD level (``"scalar"``, ``"avx2"``, ``"avx512"``); None picks the best.

    Returns:
        ``(scores, ids)``: float32 and int64 arrays of shape ``[m, k]``, always 2-D (a single
        query gives ``m == 1``). Row ``i`` is sorted best first.

    Raises:
        TypeError: an input is not a numpy array of the required dtype.
        ValueError: wrong shape or layout, dimension mismatch, negative ``k`` or ``threads``,
            or a SIMD level this CPU does not run.
    """
    if isinstance(queries, np.ndarray) and queries.ndim == 1:
        queries = queries[np.newaxis, :]
    return _native.topk_f32(db, queries, k, live=live, threads=threads, simd=simd)


def simd_level() -> str:
    """SIMD level used when a call names none: ``"scalar"``, ``"avx2"`` or ``"avx512"``."""
    return _native.simd_level()


def available_simd_levels() -> list[str]:
    """SIMD levels this CPU runs, lowest first (``"scalar"`` is always there)."""
    return _native.available_simd_levels()
