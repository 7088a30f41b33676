"""ChunkedRows.take returns exactly the rows asked for, in order, on both of its paths."""

from __future__ import annotations

import numpy as np
import pytest
from lookalike.server.core.backends.builtin.chunks import SMALL_TAKE, ChunkedRows


@pytest.mark.parametrize("count", [0, 1, SMALL_TAKE - 1, SMALL_TAKE, SMALL_TAKE + 1, 500])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8])
def test_take_equals_fancy_indexing_of_the_whole(count: int, dtype: type) -> None:
    rng = np.random.default_rng(count)
    whole = (rng.standard_normal((1000, 5)) * 50).astype(dtype)
    rows = ChunkedRows(dtype, 5, 64)  # 16 chunks: a random pick spans many of them
    for start in range(0, 1000, 300):  # appends that straddle chunk boundaries
        rows.append(whole[start : start + 300])
    pick = rng.integers(0, 1000, count)  # unsorted, with repeats
    got = rows.take(pick)
    assert got.dtype == whole.dtype and got.shape == (count, 5)
    np.testing.assert_array_equal(got, whole[pick])
