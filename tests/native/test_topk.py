"""lookalike.native.topk against a naive numpy reference, at every SIMD level this CPU runs."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lookalike import native

LEVELS = native.available_simd_levels()


def reference(
    db: np.ndarray, queries: np.ndarray, k: int, live: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 scores, stable argsort (equal scores keep the lower id first), -inf/-1 padding."""
    queries = np.atleast_2d(queries)
    m, n = queries.shape[0], db.shape[0]
    scores = queries.astype(np.float64) @ db.astype(np.float64).T
    out_s = np.full((m, k), -np.inf)
    out_i = np.full((m, k), -1, dtype=np.int64)
    rows = np.arange(n) if live is None else np.flatnonzero(live)
    for i in range(m):
        order = rows[np.argsort(-scores[i, rows], kind="stable")][:k]
        out_s[i, : len(order)] = scores[i, order]
        out_i[i, : len(order)] = order
    return out_s, out_i


def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def small_ints(rng: np.random.Generator, *shape: int, lo: int = -1, hi: int = 1) -> np.ndarray:
    """Few distinct values: many exact ties, and dot products every summation order gets exactly."""
    return rng.integers(lo, hi + 1, size=shape).astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@pytest.mark.parametrize("simd", LEVELS)
@pytest.mark.parametrize("d", [1, 3, 8, 17, 33, 384])
def test_random_floats_match_reference(simd: str, d: int) -> None:
    rng = np.random.default_rng(d)
    db, q = normal(rng, 700, d), normal(rng, 9, d)
    scores, ids = native.topk(db, q, 10, simd=simd)
    ref_s, ref_i = reference(db, q, 10)
    tol = 1e-5 * d + 1e-5
    np.testing.assert_allclose(scores, ref_s, atol=tol, rtol=0)
    # each id's own true score is the reported one (ids may swap only within a near-tie)
    true = np.take_along_axis(q.astype(np.float64) @ db.astype(np.float64).T, ids, axis=1)
    np.testing.assert_allclose(scores, true, atol=tol, rtol=0)
    clear = np.abs(np.diff(ref_s, axis=1, append=-np.inf)) > 2 * tol
    clear &= np.abs(np.diff(ref_s, axis=1, prepend=np.inf)) > 2 * tol
    np.testing.assert_array_equal(ids[clear], ref_i[clear])


@pytest.mark.parametrize("simd", LEVELS)
@pytest.mark.parametrize("d", [1, 5, 16, 29, 130, 1000])
def test_many_ties_exactly_like_stable_argsort(simd: str, d: int) -> None:
    rng = np.random.default_rng(100 + d)
    db, q = small_ints(rng, 400, d), small_ints(rng, 6, d)
    scores, ids = native.topk(db, q, 60, simd=simd)
    ref_s, ref_i = reference(db, q, 60)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


@pytest.mark.parametrize("simd", LEVELS)
def test_duplicate_rows_come_out_by_index(simd: str) -> None:
    rng = np.random.default_rng(1)
    base = normal(rng, 10, 45)
    db = np.ascontiguousarray(np.tile(base, (10, 1)))  # row r is a copy of row r % 10
    q = normal(rng, 4, 45)
    scores, ids = native.topk(db, q, 25, simd=simd)
    for i in range(4):
        best = np.argsort(-(base.astype(np.float64) @ q[i]), kind="stable")
        expected = [best[j // 10] + 10 * (j % 10) for j in range(25)]
        np.testing.assert_array_equal(ids[i], expected)
        # copies score bit-identically, wherever they fall in the kernel's tiles
        assert len(set(scores[i, :10].tolist())) == 1


def test_cosine_of_unit_vectors_finds_itself() -> None:
    rng = np.random.default_rng(2)
    db = unit_rows(normal(rng, 5000, 384))
    scores, ids = native.topk(db, db[[7, 4999]], 3)
    assert ids[:, 0].tolist() == [7, 4999]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (scores[:, 1] < 0.5).all()


def test_k_larger_than_n_is_padded() -> None:
    rng = np.random.default_rng(3)
    db, q = small_ints(rng, 5, 12), small_ints(rng, 3, 12)
    scores, ids = native.topk(db, q, 9)
    ref_s, ref_i = reference(db, q, 9)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert all(sorted(row) == [0, 1, 2, 3, 4] for row in ids[:, :5].tolist())


def test_empty_database_is_all_padding() -> None:
    db = np.empty((0, 16), dtype=np.float32)
    scores, ids = native.topk(db, np.ones((2, 16), dtype=np.float32), 4)
    assert scores.shape == ids.shape == (2, 4)
    assert (ids == -1).all() and np.isneginf(scores).all()


def test_zero_k_and_zero_queries() -> None:
    db = np.ones((10, 4), dtype=np.float32)
    scores, ids = native.topk(db, np.ones((3, 4), dtype=np.float32), 0)
    assert scores.shape == ids.shape == (3, 0)
    scores, ids = native.topk(db, np.empty((0, 4), dtype=np.float32), 5)
    assert scores.shape == ids.shape == (0, 5)


@pytest.mark.parametrize("simd", LEVELS)
@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.5, 1.0])
def test_live_mask_skips_deleted_rows(simd: str, fraction: float) -> None:
    rng = np.random.default_rng(4)
    db, q = small_ints(rng, 5000, 16, lo=-2, hi=2), small_ints(rng, 7, 16, lo=-2, hi=2)
    live = (rng.random(5000) < fraction).astype(np.uint8)
    scores, ids = native.topk(db, q, 20, live=live, simd=simd, threads=2)
    ref_s, ref_i = reference(db, q, 20, live)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


def test_bool_mask_and_any_nonzero_byte_mean_live() -> None:
    rng = np.random.default_rng(5)
    db, q = normal(rng, 300, 8), normal(rng, 2, 8)
    live = rng.random(300) < 0.3
    by_bool = native.topk(db, q, 12, live=live)
    by_bytes = native.topk(db, q, 12, live=live.astype(np.uint8) * 7)
    np.testing.assert_array_equal(by_bool[1], by_bytes[1])
    assert live[by_bool[1]].all()


def test_one_dimensional_query_gives_one_row() -> None:
    rng = np.random.default_rng(6)
    db, q = normal(rng, 100, 20), normal(rng, 20)
    scores, ids = native.topk(db, q, 5)
    assert scores.shape == ids.shape == (1, 5)
    both = native.topk(db, q[np.newaxis, :], 5)
    np.testing.assert_array_equal(ids, both[1])
    np.testing.assert_array_equal(scores, both[0])


def test_outputs_are_fresh_contiguous_arrays() -> None:
    db = np.eye(4, dtype=np.float32)
    scores, ids = native.topk(db, db, 2)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.flags.c_contiguous and scores.flags.writeable and ids.flags.owndata


@pytest.mark.parametrize(
    ("n", "m", "k"),
    [(60000, 4, 10), (150, 2000, 5), (3000, 400, 700)],  # split by rows, by queries, large k
)
def test_thread_count_does_not_change_results(n: int, m: int, k: int) -> None:
    rng = np.random.default_rng(7)
    db, q = normal(rng, n, 64), normal(rng, m, 64)
    one = native.topk(db, q, k, threads=1)
    for threads in (2, 3, 16):
        many = native.topk(db, q, k, threads=threads)
        np.testing.assert_array_equal(one[1], many[1])
        np.testing.assert_array_equal(one[0], many[0])


def test_query_result_does_not_depend_on_batch() -> None:
    rng = np.random.default_rng(8)
    db, q = normal(rng, 2000, 77), normal(rng, 8, 77)
    batch = native.topk(db, q, 6)
    for i in range(8):
        single = native.topk(db, q[i], 6)
        np.testing.assert_array_equal(single[1][0], batch[1][i])
        np.testing.assert_array_equal(single[0][0], batch[0][i])


def test_concurrent_calls_from_python_threads() -> None:
    rng = np.random.default_rng(9)
    db, q = normal(rng, 20000, 64), normal(rng, 16, 64)
    expected = native.topk(db, q, 10, threads=1)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: native.topk(db, q, 10, threads=2), range(8)))
    for scores, ids in results:
        np.testing.assert_array_equal(ids, expected[1])
        np.testing.assert_array_equal(scores, expected[0])


# ---- bad inputs: the message says what is wrong and how to fix it ------------------------------

DB = np.zeros((10, 8), dtype=np.float32)
Q = np.zeros((2, 8), dtype=np.float32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: native.topk(DB.astype(np.float64), Q, 3),
            TypeError,
            r"float64 is not a storage type.*ascontiguousarray\(db, dtype=np.float32\)",
        ),
        (lambda: native.topk(DB, Q.astype(np.float16), 3), TypeError, r"queries must be float32.*float16"),
        (lambda: native.topk(DB.tolist(), Q, 3), TypeError, r"db\[0\] must be a numpy.ndarray, got list"),
        (lambda: native.topk(object(), Q, 3), TypeError, r"db must be a numpy.ndarray, got object"),
        (lambda: native.topk(DB, Q.astype(np.int8), 3), TypeError, r"queries must be float32.*int8"),
        (lambda: native.topk(DB[:, ::2], Q[:, :4], 3), ValueError, r"db must be C-contiguous.*ascontiguous"),
        (lambda: native.topk(np.asfortranarray(DB), Q, 3), ValueError, r"db must be C-contiguous"),
        (lambda: native.topk(DB, Q[:, ::2], 3), ValueError, r"queries must be float32 C-contiguous"),
        (lambda: native.topk(DB, np.zeros((2, 7), np.float32), 3), ValueError, r"dimension 7 but db rows have 8"),
        (lambda: native.topk(DB, Q, -1), ValueError, r"k must be >= 0, got -1"),
        (lambda: native.topk(DB, Q, 3, threads=-2), ValueError, r"threads must be >= 0"),
        (lambda: native.topk(DB[0], Q, 3), ValueError, r"db must be 2-D.*\(8,\)"),
        (lambda: native.topk(DB[None], Q, 3), ValueError, r"db must be 2-D.*\(1, 10, 8\)"),
        (
            lambda: native.topk(DB, Q, 3, live=np.ones(9, np.uint8)),
            ValueError,
            r"live must be 1-D with at least 10 entries.*\(9,\)",
        ),
        (lambda: native.topk(DB, Q, 3, live=np.ones(10, np.int32)), TypeError, r"live has dtype int32.*uint8 or bool"),
        (lambda: native.topk(DB, Q, 3, live=[1] * 10), TypeError, r"live must be None or a numpy.ndarray"),
        (lambda: native.topk(DB, Q, 3, simd="sse9"), ValueError, r"simd must be None, 'scalar'"),
    ],
)
def test_bad_inputs_raise_clear_errors(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_byte_swapped_input_is_rejected() -> None:
    with pytest.raises(TypeError, match="float32"):
        native.topk(DB.astype(">f4"), Q, 3)


@pytest.mark.skipif("avx512" in LEVELS, reason="this CPU runs every level")
def test_unsupported_simd_level_is_refused() -> None:
    with pytest.raises(ValueError, match="not supported by this CPU"):
        native.topk(DB, Q, 3, simd="avx512")


# ---- SIMD level selection ---------------------------------------------------------------------


def test_simd_level_is_the_best_available() -> None:
    assert LEVELS[0] == "scalar"
    assert set(LEVELS) <= {"scalar", "avx2", "avx512"}
    if "LOOKALIKE_SIMD" not in os.environ:
        assert native.simd_level() == LEVELS[-1]


def _level_in_subprocess(value: str, code: str = "print(native.simd_level())") -> subprocess.CompletedProcess[str]:
    code = "import numpy as np; from lookalike import native; " + code
    # the child imports lookalike exactly as this process did
    env = {**os.environ, "LOOKALIKE_SIMD": value, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_environment_caps_the_level() -> None:
    done = _level_in_subprocess("scalar")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "scalar"


@pytest.mark.parametrize(
    "call", ["native.simd_level()", "native.topk(np.eye(4, dtype=np.float32), np.ones(4, np.float32), 2)"]
)
def test_environment_with_a_bad_level_fails_loudly(call: str) -> None:
    done = _level_in_subprocess("fast", call)
    assert done.returncode == 1, done.stderr
    assert "ValueError" in done.stderr
    assert "LOOKALIKE_SIMD=fast" in done.stderr and "scalar, avx2 or avx512" in done.stderr
