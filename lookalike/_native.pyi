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

class HnswGraph:
    def __init__(
        self, dimensions: int, dtype: str, connectivity: int = 16, expansion_add: int = 128, expansion_search: int = 64
    ) -> None: ...
    @staticmethod
    def load(buffer: object) -> HnswGraph: ...
    @staticmethod
    def load_file(path: str) -> HnswGraph: ...
    def save(self) -> npt.NDArray[np.uint8]: ...
    def save_file(self, path: str) -> None: ...
    def __len__(self) -> int: ...
    @property
    def dimensions(self) -> int: ...
    @property
    def connectivity(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def memory_usage(self) -> int: ...
    @property
    def kernel(self) -> str: ...
    @property
    def expansion_add(self) -> int: ...
    @property
    def expansion_search(self) -> int: ...
    def set_expansion(self, add: int = 0, search: int = 0) -> None: ...
    def contains(self, key: int) -> bool: ...
    def add(self, keys: npt.NDArray[np.integer], vectors: npt.NDArray[np.float32], threads: int = 0) -> int: ...
    def remove(self, keys: npt.NDArray[np.integer]) -> int: ...
    def search(self, query: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.int64]: ...
    def search_many(self, queries: npt.NDArray[np.float32], count: int, threads: int = 0) -> npt.NDArray[np.int64]: ...
    def search_reranked(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        count: int,
        rows: list[npt.NDArray[np.generic]],
        n: int,
        ids: npt.NDArray[np.int64],
        live: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    def search_reranked_many(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        count: int,
        rows: list[npt.NDArray[np.generic]],
        n: int,
        ids: npt.NDArray[np.int64],
        live: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
        threads: int = 0,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
