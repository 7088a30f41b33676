"""lookalike.native.range_join (threshold join) against numpy, at every SIMD level this CPU runs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lookalike import native

LEVELS = native.available_simd_levels()


def reference(
    db: np.ndarray,
    queries: np.ndarray,
    threshold: float,
    live: np.ndarray | None = None,
    min_row: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 scores; every (query, row) >= threshold, live, row > min_row[query]; (query, row) order."""
    scores = np.atleast_2d(queries).astype(np.float64) @ db.astype(np.float64).T
    keep = scores >= threshold
    if live is not None:
        keep &= live.astype(bool)[None, :]
    if min_row is not None:
        keep &= np.arange(db.shape[0])[None, :] > min_row[:, None]
    qi, rows = np.nonzero(keep)  # row-major: sorted by (query, row)
    return qi, rows, scores[qi, rows]


def small_ints(rng: np.random.Generator, *shape: int, lo: int = -2, hi: int = 2) -> np.ndarray:
    """Few distinct values: exact scores at every level, many ties at an integer threshold."""
    return rng.integers(lo, hi + 1, size=shape).astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def assert_pairs_equal(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    qi, rows, scores = got
    assert qi.dtype == np.int64 and rows.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(qi, want[0])
    np.testing.assert_array_equal(rows, want[1])
    np.testing.assert_array_equal(scores, want[2].astype(np.float32))


@pytest.mark.parametrize("simd", LEVELS)
@pytest.mark.parametrize("d", [1, 5, 16, 17, 100, 384])
def test_exact_pairs_with_ties(simd: str, d: int) -> None:
    rng = np.random.default_rng(d)
    db, q = small_ints(rng, 613, d), small_ints(rng, 7, d)
    t = float(max(1, int(np.sqrt(2 * d))))  # an integer many scores hit exactly
    live = (rng.random(613) < 0.8).astype(np.uint8)
    min_row = np.array([-1, 0, 5, 100, 300, 612, 1000], np.int64)
    assert_pairs_equal(native.range_join(db, q, t, simd=simd), reference(db, q, t))
    assert_pairs_equal(
        native.range_join(db, q, t, simd=simd, live=live, min_row=min_row, threads=3),
        reference(db, q, t, live, min_row),
    )


@pytest.mark.parametrize("simd", LEVELS)
def test_f32_unit_vectors_exact_pair_set(simd: str) -> None:
    rng = np.random.default_rng(1)
    db = unit_rows(rng.standard_normal((2000, 64), dtype=np.float32))
    q = db[:100]
    t = 0.3
    qi, rows, scores = native.range_join(db, q, t, simd=simd)
    ref_q, ref_r, ref_s = reference(db, q, t)
    clear = np.abs(ref_s - t) > 1e-5  # pairs within 1e-5 of the threshold may go either way
    got = set(zip(qi.tolist(), rows.tolist(), strict=True))
    want_sure = set(zip(ref_q[clear].tolist(), ref_r[clear].tolist(), strict=True))
    assert want_sure <= got
    all_scores = q.astype(np.float64) @ db.astype(np.float64).T
    np.testing.assert_allclose(scores, all_scores[qi, rows], atol=1e-5)
    assert (scores >= t).all()
    assert (np.abs(all_scores[qi, rows] - t) > 1e-5).sum() == len(want_sure)  # nothing clearly below t
    assert ((0, 0) in got) and len(got) > 100  # every query meets itself


@pytest.mark.parametrize("storage", ["f16", "bf16", "i8"])
def test_compact_storage_scores_within_tolerance(storage: str) -> None:
    rng = np.random.default_rng(2)
    x = unit_rows(rng.standard_normal((1500, 96), dtype=np.float32))
    q = x[:40]
    kwargs: dict[str, object] = {}
    if storage == "f16":
        db, values = x.astype(np.float16), x.astype(np.float16).astype(np.float32)
    elif storage == "bf16":
        db = native.to_bfloat16(x)
        values = native.from_bfloat16(db)
    else:
        db, scales = native.quantize_int8(x)
        values = native.dequantize_int8(db, scales)
        kwargs["scales"] = scales
    t, tol = 0.25, 2e-4
    qi, rows, scores = native.range_join(db, q, t, **kwargs)  # type: ignore[arg-type]
    true = q.astype(np.float64) @ values.astype(np.float64).T
    np.testing.assert_allclose(scores, true[qi, rows], atol=tol)
    got = set(zip(qi.tolist(), rows.tolist(), strict=True))
    want = set(zip(*np.nonzero(true >= t + tol), strict=True))
    assert want <= got
    assert (true[qi, rows] >= t - tol).all()


def test_chunked_db_equals_single_array() -> None:
    rng = np.random.default_rng(3)
    db = unit_rows(rng.standard_normal((1000, 40), dtype=np.float32))
    q = db[200:260]
    min_row = np.arange(200, 260, dtype=np.int64)
    want = native.range_join(db, q, 0.2, min_row=min_row)
    chunks = [db[:1], db[1:333], db[333:333], db[333:999], db[999:]]
    got = native.range_join(chunks, q, 0.2, min_row=min_row)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # n= limits the rows (capacity-sized chunks, the last one partly filled)
    cap = [db[:500], np.concatenate([db[500:800], np.zeros((200, 40), np.float32)])]
    part = native.range_join(cap, q, 0.2, n=800, min_row=min_row)
    ref = reference(db[:800], q, 0.2, min_row=min_row)
    np.testing.assert_array_equal(part[0], ref[0])
    np.testing.assert_array_equal(part[1], ref[1])


def test_self_join_blocks_find_every_pair_once() -> None:
    """The caller's loop: blocks of rows as queries, min_row = own rows: the upper triangle."""
    rng = np.random.default_rng(4)
    db = small_ints(rng, 500, 12, lo=-1, hi=1)
    t = 5.0
    found = []
    for a in range(0, 500, 96):
        q = db[a : a + 96]
        qi, rows, _ = native.range_join(db, q, t, min_row=np.arange(a, a + len(q), dtype=np.int64))
        found += list(zip((qi + a).tolist(), rows.tolist(), strict=True))
    i, j = np.nonzero(np.triu(db.astype(np.float64) @ db.T.astype(np.float64) >= t, k=1))
    assert found == list(zip(i.tolist(), j.tolist(), strict=True))


def test_thresholds_none_and_all() -> None:
    rng = np.random.default_rng(5)
    db, q = small_ints(rng, 300, 9), small_ints(rng, 3, 9)
    assert len(native.range_join(db, q, 1e9)[0]) == 0
    qi, rows, _ = native.range_join(db, q, -1e9)
    assert len(qi) == 900
    np.testing.assert_array_equal(rows, np.tile(np.arange(300), 3))
    assert_pairs_equal(native.range_join(db, q, 0.0), reference(db, q, 0.0))
    one = native.range_join(db, q[0], 0.0)  # one query as a vector
    assert_pairs_equal(one, reference(db, q[:1], 0.0))
    empty = native.range_join(db, q[:0], 0.0)
    assert all(len(a) == 0 for a in empty)


def test_max_pairs_error_says_how_many() -> None:
    rng = np.random.default_rng(6)
    db, q = small_ints(rng, 200, 8), small_ints(rng, 4, 8)
    count = len(reference(db, q, 0.0)[0])
    assert len(native.range_join(db, q, 0.0, max_pairs=count)[0]) == count
    with pytest.raises(ValueError, match=f"{count} pairs .* max_pairs = {count - 1}; raise the threshold"):
        native.range_join(db, q, 0.0, max_pairs=count - 1)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda db, q: native.range_join(db, q, float("nan")), ValueError, "threshold must be a finite"),
        (lambda db, q: native.range_join(db, q, float("inf")), ValueError, "threshold must be a finite"),
        (lambda db, q: native.range_join(db, q.astype(np.float64), 0.5), TypeError, "queries must be float32"),
        (lambda db, q: native.range_join(db, q[:, :4].copy(), 0.5), ValueError, "dimension"),
        (lambda db, q: native.range_join(db, np.asfortranarray(q), 0.5), ValueError, "C-contiguous"),
        (lambda db, q: native.range_join(db.astype(np.float64), q, 0.5), TypeError, "not a storage type"),
        (lambda db, q: native.range_join(db, q, 0.5, min_row=np.zeros(2, np.int64)), ValueError, "one entry per"),
        (lambda db, q: native.range_join(db, q, 0.5, min_row=np.zeros(3, np.int32)), TypeError, "min_row has dtype"),
        (lambda db, q: native.range_join(db, q, 0.5, min_row=[0, 1, 2]), TypeError, "numpy.ndarray"),
        (lambda db, q: native.range_join(db, q, 0.5, max_pairs=-1), ValueError, "max_pairs must be >= 0"),
        (lambda db, q: native.range_join(db, q, 0.5, threads=-1), ValueError, "threads must be >= 0"),
        (lambda db, q: native.range_join(db, q, 0.5, live=np.ones(5, np.uint8)), ValueError, "live must be 1-D"),
        (lambda db, q: native.range_join(db, q, 0.5, n=11), ValueError, "n must be in"),
        (lambda db, q: native.range_join(db, q, 0.5, simd="sse9"), ValueError, "simd must be"),
        (lambda db, q: native.range_join(db.astype(np.int8), q, 0.5), TypeError, "needs scales"),
        (lambda db, q: native.range_join(db, q, 0.5, scales=np.ones(10, np.float32)), ValueError, "int8 databases"),
    ],
)
def test_validation_errors(call: object, error: type[Exception], match: str) -> None:
    rng = np.random.default_rng(7)
    db = unit_rows(rng.standard_normal((10, 8), dtype=np.float32))
    q = np.ascontiguousarray(db[:3])
    with pytest.raises(error, match=match):
        call(db, q)  # type: ignore[operator]


def test_concurrent_callers_match_sequential() -> None:
    rng = np.random.default_rng(8)
    db = unit_rows(rng.standard_normal((20_000, 64), dtype=np.float32))
    blocks = [(db[a : a + 64], np.arange(a, a + 64, dtype=np.int64)) for a in range(0, 640, 64)]
    want = [native.range_join(db, q, 0.35, min_row=mr) for q, mr in blocks]
    with ThreadPoolExecutor(max_workers=5) as pool:
        got = list(pool.map(lambda b: native.range_join(db, b[0], 0.35, min_row=b[1], threads=2), blocks * 2))
    for g, w in zip(got, want * 2, strict=True):
        for a, b in zip(g, w, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("simd", LEVELS)
@pytest.mark.parametrize("quantile", [0.5, 0.99, 0.9999, 1.0])
def test_pruning_never_changes_the_result(simd: str, quantile: float) -> None:
    """Exact pruning: thresholds at a pair's own float score (the tightest case) included."""
    rng = np.random.default_rng(9)
    centres = rng.standard_normal((20, 200), dtype=np.float32)
    db = unit_rows(centres[rng.integers(0, 20, 3000)] + 0.5 * rng.standard_normal((3000, 200), dtype=np.float32))
    q = db[:50]
    _, _, all_scores = native.range_join(db, q, -2.0, prune=False, simd=simd, max_pairs=10**6)
    t = float(np.sort(all_scores)[min(len(all_scores) - 1, int(quantile * len(all_scores)))])
    mr = np.arange(50, dtype=np.int64)
    want = native.range_join(db, q, t, min_row=mr, prune=False, simd=simd)
    got = native.range_join(db, q, t, min_row=mr, simd=simd)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
