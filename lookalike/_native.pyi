"""Type stubs for the compiled module ``lookalike._native`` (built from ext/binding.cpp).

The typed, documented API is ``lookalike.native``.
"""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

def topk(
    db: npt.NDArray[np.generic] | Sequence[npt.NDArray[np.generic]],
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
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def range_join(
    db: npt.NDArray[np.generic] | Sequence[npt.NDArray[np.generic]],
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
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def stream_read(array: npt.NDArray[np.generic], *, threads: int = 0, simd: str | None = None) -> int: ...
def set_threads(n: int) -> None: ...
def get_threads() -> int: ...
def simd_level() -> str: ...
def available_simd_levels() -> list[str]: ...
