"""Storage types, chunks, masks and one-per-group search of lookalike.native.topk, property-tested
with hypothesis against a float64 numpy reference computed on the dequantized values."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lookalike import native

LEVELS = native.available_simd_levels()
STORAGES = ["f32", "f16", "bf16", "i8"]
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stored(x: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(db, scales, values): x in a storage type, and the float values that storage stands for."""
    if storage == "f32":
        return x, None, x.astype(np.float64)
    if storage == "f16":
        db = x.astype(np.float16)
        return db, None, db.astype(np.float64)
    if storage == "bf16":
        db = native.to_bfloat16(x)
        return db, None, native.from_bfloat16(db).astype(np.float64)
    if np.array_equal(x, np.rint(x)) and (np.abs(x) <= 127).all():  # small integers: scale 1, exact
        q, scales = x.astype(np.int8), np.ones(x.shape[0], np.float32)
    else:
        q, scales = native.quantize_int8(x)
    return q, scales, native.dequantize_int8(q, scales).astype(np.float64)


def reference(
    values: np.ndarray,
    queries: np.ndarray,
    k: int,
    live: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 scores; best first, ties by lower id; one per group when groups are given."""
    m, n = queries.shape[0], values.shape[0]
    scores = queries.astype(np.float64) @ values.T if n else np.zeros((m, 0))
    out_s = np.full((m, k), -np.inf)
    out_i = np.full((m, k), -1, dtype=np.int64)
    rows = np.arange(n) if live is None else np.flatnonzero(live[:n])
    for i in range(m):
        order = rows[np.lexsort((rows, -scores[i, rows]))]
        if groups is not None:
            _, first = np.unique(groups[order], return_index=True)
            order = order[np.sort(first)]
        order = order[:k]
        out_s[i, : order.size] = scores[i, order]
        out_i[i, : order.size] = order
    return out_s, out_i


def check(
    got: tuple[np.ndarray, np.ndarray],
    ref: tuple[np.ndarray, np.ndarray],
    values: np.ndarray,
    queries: np.ndarray,
    exact: bool,
    live: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    int8: bool = False,
) -> None:
    scores, ids = got
    ref_s, ref_i = ref
    assert scores.shape == ids.shape == ref_s.shape
    if exact:  # integer data: every summation order gives the same number, ties included
        np.testing.assert_array_equal(ids, ref_i)
        np.testing.assert_array_equal(scores, ref_s.astype(np.float32))
        return
    tol = 1e-5 * max(values.shape[1], 1) * max(1.0, float(np.abs(values).max(initial=0))) + 1e-5
    if int8:  # the integer kernel rounds the query to int16 (int8_kernel.hpp): bounded extra error
        qmax = min(32639.0, 2147483647.0 / (127.0 * max(values.shape[1], 1)))
        tol += float(np.abs(queries).max(initial=0)) * float(np.abs(values).sum(axis=1).max(initial=0)) / qmax
    np.testing.assert_array_equal(ids == -1, ref_i == -1)  # same amount of padding
    np.testing.assert_allclose(np.where(ids >= 0, scores, 0), np.where(ref_i >= 0, ref_s, 0), atol=tol, rtol=0)
    for i in range(ids.shape[0]):
        real = ids[i][ids[i] >= 0]
        assert len(set(real.tolist())) == real.size, "duplicate ids"
        own = values[real] @ queries[i].astype(np.float64)
        np.testing.assert_allclose(scores[i, : real.size], own, atol=tol, rtol=0)
        if live is not None:
            assert live[real].all(), "deleted row returned"
        if groups is not None:
            assert len(set(groups[real].tolist())) == real.size, "two rows of one group"
        kth = ref_s[i, real.size - 1] if real.size else -np.inf
        clearly_better = ref_i[i][(ref_s[i] > kth + 2 * tol) & (ref_i[i] >= 0)]
        assert set(clearly_better.tolist()) <= set(real.tolist()), "missed a clearly better row"


@st.composite
def problems(draw: st.DrawFn) -> dict:
    n = draw(st.integers(0, 300))
    d = draw(st.integers(1, 70))
    m = draw(st.integers(0, 4))
    k = draw(st.integers(0, n + 5))
    kind = draw(st.sampled_from(["normal", "ties", "zeros"]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x, q = rng.standard_normal((n, d), np.float32), rng.standard_normal((m, d), np.float32)
    else:  # few distinct small integers: heavy ties; "zeros" adds all-zero rows and queries
        x = rng.integers(-1, 2, (n, d)).astype(np.float32)
        q = rng.integers(-2, 3, (m, d)).astype(np.float32)
        if kind == "zeros":
            x[rng.random(n) < 0.5] = 0
            q[rng.random(m) < 0.3] = 0
    live = (rng.random(n) < draw(st.sampled_from([0.0, 0.3, 1.0]))).astype(np.uint8) if draw(st.booleans()) else None
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    return {
        "x": x,
        "q": q,
        "k": k,
        "exact": kind != "normal",
        "live": live,
        "cuts": cuts,
        "storage": draw(st.sampled_from(STORAGES)),
        "simd": draw(st.sampled_from(LEVELS)),
        "threads": draw(st.integers(1, 4)),
        "groups": rng.integers(0, draw(st.integers(1, 20)), n) if draw(st.booleans()) else None,
    }


def split(a: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    return [np.ascontiguousarray(p) for p in np.split(a, cuts)]


@PROPERTY
@given(problems())
def test_topk_matches_float64_reference(p: dict) -> None:
    db, scales, values = stored(p["x"], p["storage"])
    one = p["groups"] is not None
    got = native.topk(
        db,
        p["q"],
        p["k"],
        live=p["live"],
        groups=p["groups"],
        one_per_group=one,
        scales=scales,
        simd=p["simd"],
        threads=p["threads"],
    )
    ref = reference(values, p["q"], p["k"], p["live"], p["groups"])
    check(got, ref, values, p["q"], p["exact"], p["live"], p["groups"], int8=p["storage"] == "i8")


@PROPERTY
@given(problems())
def test_chunks_give_the_single_array_result(p: dict) -> None:
    db, scales, _ = stored(p["x"], p["storage"])
    kw = {"live": p["live"], "simd": p["simd"], "groups": p["groups"], "one_per_group": p["groups"] is not None}
    single = native.topk(db, p["q"], p["k"], scales=scales, **kw)
    chunk_scales = None if scales is None else split(scales, p["cuts"])
    by_chunks = native.topk(split(db, p["cuts"]), p["q"], p["k"], scales=chunk_scales, threads=p["threads"], **kw)
    np.testing.assert_array_equal(single[1], by_chunks[1])
    np.testing.assert_array_equal(single[0], by_chunks[0])
    if scales is not None:  # one scales array over all rows works too
        flat = native.topk(split(db, p["cuts"]), p["q"], p["k"], scales=scales, **kw)
        np.testing.assert_array_equal(single[1], flat[1])


def test_n_limits_rows_of_fixed_size_chunks() -> None:
    # The server's layout: 3 chunks of capacity 100, 250 rows filled; rows past n hold garbage.
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal((100, 16), np.float32) for _ in range(3)]
    chunks[2][50:] = 1e6
    q = rng.standard_normal((3, 16), np.float32)
    live = np.ones(300, np.uint8)  # capacity-sized mask
    got = native.topk(chunks, q, 400, n=250, live=live)
    ref = native.topk(np.concatenate(chunks)[:250], q, 400)
    np.testing.assert_array_equal(got[1], ref[1])
    assert (got[1][:, 250:] == -1).all()


@pytest.mark.parametrize("storage", STORAGES)
def test_one_per_group_single_scan_vs_naive_big_group(storage: str) -> None:
    # One group holds most rows (and the best ones): the old server needed 7 growing scans.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20000, 32), np.float32)
    groups = np.zeros(20000, np.int64)
    groups[::500] = np.arange(40) + 1
    q = x[:3] * 4
    db, scales, values = stored(x, storage)
    got = native.topk(db, q, 10, groups=groups, one_per_group=True, scales=scales)
    check(got, reference(values, q, 10, groups=groups), values, q, exact=False, groups=groups, int8=storage == "i8")
    assert (got[1][:, 0] == np.arange(3)).all()  # each query's own row, in group 0


@pytest.mark.parametrize("storage", STORAGES)
def test_concurrent_callers_get_the_sequential_result(storage: str) -> None:
    rng = np.random.default_rng(3)
    db, scales, _ = stored(rng.standard_normal((30000, 48), np.float32), storage)
    q = rng.standard_normal((5, 48), np.float32)
    groups = rng.integers(0, 1000, 30000)
    calls = [
        {"threads": 1},
        {"threads": 3},
        {"threads": 2, "groups": groups, "one_per_group": True},
        {"threads": 0, "live": (rng.random(30000) < 0.5)},
    ]
    expected = [native.topk(db, q, 10, scales=scales, **c) for c in calls]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda j: native.topk(db, q, 10, scales=scales, **calls[j % 4]), range(24)))
    for j, (s, i) in enumerate(results):
        np.testing.assert_array_equal(i, expected[j % 4][1])
        np.testing.assert_array_equal(s, expected[j % 4][0])


def test_thread_budget_is_settable_and_results_do_not_depend_on_it() -> None:
    rng = np.random.default_rng(4)
    db, q = rng.standard_normal((50000, 32), np.float32), rng.standard_normal((2, 32), np.float32)
    before = native.get_threads()
    try:
        native.set_threads(1)
        assert native.get_threads() == 1
        one = native.topk(db, q, 10)
        native.set_threads(3)
        assert native.get_threads() == 3
        three = native.topk(db, q, 10)
    finally:
        native.set_threads(before)
    np.testing.assert_array_equal(one[1], three[1])
    with pytest.raises(ValueError, match="threads must be >= 0"):
        native.set_threads(-1)


# ---- helpers ------------------------------------------------------------------------------------


@PROPERTY
@given(st.lists(st.floats(-(2.0**100), 2.0**100, width=32), min_size=1, max_size=50))
def test_bfloat16_round_trip_error_is_half_an_ulp(values: list[float]) -> None:
    x = np.array(values, np.float32)
    back = native.from_bfloat16(native.to_bfloat16(x))
    assert (np.abs(back.astype(np.float64) - x) <= np.abs(x.astype(np.float64)) * 2.0**-8 + 1e-38).all()
    np.testing.assert_array_equal(native.from_bfloat16(native.to_bfloat16(back)), back)  # exact values stay


def test_bfloat16_rounds_to_nearest_even() -> None:
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, -2.0, np.inf, np.nan], np.float32)
    back = native.from_bfloat16(native.to_bfloat16(x))
    np.testing.assert_array_equal(back[:4], np.array([1.0, 1 + 2**-6, -2.0, np.inf], np.float32))
    assert np.isnan(back[4])


def test_quantize_int8_error_and_zero_rows() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((100, 64), np.float32)
    x[7] = 0
    q, scales = native.quantize_int8(x)
    assert q.dtype == np.int8 and scales.dtype == np.float32 and scales[7] == 0
    err = np.abs(native.dequantize_int8(q, scales) - x)
    assert (err <= scales[:, None] / 2 + 1e-7).all()
    assert (np.abs(q).max(axis=1)[scales > 0] == 127).all()


@pytest.mark.skipif("avx512" not in LEVELS or "avx2" not in LEVELS, reason="needs the avx2 and avx512 levels")
@pytest.mark.parametrize("shape", [(1000, 384, 64), (517, 33, 70), (40, 1000, 17), (3, 65, 1)])
def test_int8_kernels_agree_bit_for_bit_across_levels(shape: tuple[int, int, int]) -> None:
    """The avx512 level scores int8 rows with AMX tiles where the CPU has them (VNNI otherwise):
    every integer kernel computes the same exact integer, so all give the avx2 answer bit for bit."""
    n, d, m = shape
    rng = np.random.default_rng(n + d + m)
    i8, scales = native.quantize_int8(rng.standard_normal((n, d), np.float32))
    q = rng.standard_normal((m, d), np.float32) * 4
    s5, i5 = native.topk(i8, q, 10, scales=scales, simd="avx512")
    s2, i2 = native.topk(i8, q, 10, scales=scales, simd="avx2")
    np.testing.assert_array_equal(i5, i2)
    np.testing.assert_array_equal(s5.view(np.uint32), s2.view(np.uint32))


@pytest.mark.skipif("avx512" not in LEVELS, reason="needs the avx512 level (the AMX kernels run there)")
def test_bf16_avx512_level_close_to_float64_and_batch_independent() -> None:
    """bf16 rows at the avx512 level (AMX tiles where the CPU has them and a call has >= 7
    queries: the tiles only screen, the vector kernel scores what may enter) score within float
    rounding of float64, and a query's answer is the same bits in any batch and alone (the
    vector kernel alone); clustered data puts many rows near each query's k-th score."""
    rng = np.random.default_rng(11)
    x = clustered(rng, 3000, 384, 30, 0.6)
    q = clustered(rng, 70, 384, 30, 0.6)
    db = native.to_bfloat16(x)
    values = native.from_bfloat16(db).astype(np.float64)
    s, i = native.topk(db, q, 10, simd="avx512")
    ref_s, _ = reference(values, q, 10)
    np.testing.assert_allclose(s, ref_s, atol=1e-5 * 384, rtol=0)
    np.testing.assert_allclose(s, np.take_along_axis(q.astype(np.float64) @ values.T, i, axis=1), atol=1e-5 * 384)
    for j in (0, 33, 69):
        batch = np.concatenate([q[:5], q[j : j + 1], q[40:60]])
        sb, ib = native.topk(db, batch, 10, simd="avx512")
        np.testing.assert_array_equal(ib[5], i[j])
        np.testing.assert_array_equal(sb[5].view(np.uint32), s[j].view(np.uint32))
        s1, i1 = native.topk(db, q[j], 10, simd="avx512")
        np.testing.assert_array_equal(i1[0], i[j])
        np.testing.assert_array_equal(s1[0].view(np.uint32), s[j].view(np.uint32))


def clustered(rng: np.random.Generator, n: int, d: int, clusters: int, spread: float) -> np.ndarray:
    centres = rng.standard_normal((clusters, d), np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d), np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_int8_reaches_recall_099_after_rerank() -> None:
    rng = np.random.default_rng(6)
    x = clustered(rng, 30000, 256, 300, 0.6)
    q = clustered(rng, 50, 256, 300, 0.6)
    _, truth = native.topk(x, q, 10)
    i8, scales = native.quantize_int8(x)
    _, plain = native.topk(i8, q, 10, scales=scales)
    _, reranked = native.topk_reranked(i8, q, 10, full=x, scales=scales, candidates=40)

    def recall(ids: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist(), strict=True)]))

    assert recall(reranked) >= 0.99
    assert recall(reranked) >= recall(plain)


def test_rerank_orders_exactly_and_keeps_padding() -> None:
    rng = np.random.default_rng(7)
    full = rng.standard_normal((500, 8), np.float32)
    q = rng.standard_normal((2, 8), np.float32)
    cand = np.array([[5, 3, 400, -1], [7, -1, -1, -1]])
    s, i = native.rerank([full[:300], full[300:]], q, cand, 3)
    own = full[[5, 3, 400]] @ q[0]
    np.testing.assert_array_equal(i[0], np.array([5, 3, 400])[np.argsort(-own, kind="stable")])
    np.testing.assert_allclose(s[0], np.sort(own)[::-1], rtol=1e-6)
    np.testing.assert_array_equal(i[1], [7, -1, -1])
    assert s[1, 1] == -np.inf


def test_storage_of_and_stream_read() -> None:
    x = np.ones((4, 8), np.float32)
    assert [native.storage_of(a) for a in (x, x.astype(np.float16), native.to_bfloat16(x), x.astype(np.int8))] == [
        "f32",
        "f16",
        "bf16",
        "i8",
    ]
    big = np.zeros(1 << 20, np.uint8)
    assert native.stream_read(big) == 0
    assert native.stream_read(big + 1, threads=2) == native.stream_read(big + 1, threads=2)


# ---- bad inputs --------------------------------------------------------------------------------

DB = np.zeros((10, 8), np.float32)
Q = np.zeros((2, 8), np.float32)
I8 = np.zeros((10, 8), np.int8)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: native.topk(I8, Q, 3), TypeError, r"int8 db needs scales.*quantize_int8"),
        (lambda: native.topk(DB, Q, 3, scales=np.ones(10, np.float32)), ValueError, r"scales are for int8"),
        (lambda: native.topk(I8, Q, 3, scales=np.ones(9, np.float32)), ValueError, r"scales must be 1-D.*10"),
        (lambda: native.topk(I8, Q, 3, scales=np.ones(10)), TypeError, r"scales has dtype float64"),
        (lambda: native.topk([I8, I8], Q, 3, scales=[np.ones(10, np.float32)]), ValueError, r"one per chunk"),
        (lambda: native.topk([DB, DB.astype(np.float16)], Q, 3), TypeError, r"share one dtype.*float16"),
        (lambda: native.topk([DB, np.zeros((3, 4), np.float32)], Q, 3), ValueError, r"share one dimension"),
        (lambda: native.topk([], Q, 3), ValueError, r"empty list"),
        (lambda: native.topk(DB, Q, 3, n=11), ValueError, r"n must be in \[0, 10\]"),
        (lambda: native.topk(DB, Q, 3, groups=np.zeros(10, np.int64)), ValueError, r"one_per_group=True"),
        (lambda: native.topk(DB, Q, 3, one_per_group=True), ValueError, r"needs groups"),
        (
            lambda: native.topk(DB, Q, 3, groups=np.zeros(10, np.float32), one_per_group=True),
            TypeError,
            r"groups has dtype float32",
        ),
        (lambda: native.topk(DB.astype(np.uint32), Q, 3), TypeError, r"not a storage type"),
    ],
)
def test_bad_inputs_raise_clear_errors(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_its_own_pool() -> None:
    # The parent's pool workers do not exist in a forked child: the child must start its own.
    rng = np.random.default_rng(8)
    db, q = rng.standard_normal((200000, 32), np.float32), rng.standard_normal((2, 32), np.float32)
    expected = native.topk(db, q, 5, threads=2)[1]
    pid = os.fork()
    if pid == 0:  # child: exit code says whether the pooled call matched
        ok = bool((native.topk(db, q, 5, threads=2)[1] == expected).all())
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
