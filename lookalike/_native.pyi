"""Type stubs for the compiled module ``lookalike._native`` (built from ext/binding.cpp).

Install next to the module as ``lookalike/_native.pyi``. The typed, documented API is
``lookalike.native``.
"""

import numpy as np
import numpy.typing as npt

def topk_f32(
    db: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    live: npt.NDArray[np.uint8] | npt.NDArray[np.bool_] | None = None,
    threads: int = 0,
    simd: str | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def simd_level() -> str: ...
def available_simd_levels() -> list[str]: ...
