"""cluster_pairs against brute force: naive components, a naive transcription of the greedy, full Gram matrices."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from lookalike.server.core.dedup import clusters as mod
from lookalike.server.core.dedup.clusters import Cluster, ItemInfo, KeeperRule, cluster_pairs

TOL = 1e-6


def clustered_vectors(seed: int, n: int, d: int) -> np.ndarray:
    """Families of nearby centres, items scattered around them at mixed radii: cliques, chains, loners."""
    rng = np.random.default_rng(seed)
    families = rng.standard_normal((max(1, n // 40), d))
    centres = families[rng.integers(0, len(families), max(2, n // 8))] + 0.35 * rng.standard_normal((max(2, n // 8), d))
    spread = rng.uniform(0.05, 0.7, n)[:, None] / math.sqrt(d)
    x = centres[rng.integers(0, len(centres), n)] / np.linalg.norm(centres[0]) + spread * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_pairs(vec: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gram = vec @ vec.T  # the "self-join": every pair, float32
    i, j = np.triu_indices(len(vec), 1)
    keep = gram[i, j] >= t
    return i[keep], j[keep], gram[i, j][keep]


class Reader:
    """The database's vectors, with a record of every call."""

    def __init__(self, vec: np.ndarray) -> None:
        self.vec, self.calls = vec, []

    def __call__(self, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items)
        assert items.ndim == 1 and items.dtype.kind == "i" and len(np.unique(items)) == len(items)
        self.calls.append(len(items))
        return self.vec[items]


def no_info(count: int) -> ItemInfo:
    return ItemInfo(time=np.zeros(count))


def run(vec: np.ndarray, t: float, **kw: object) -> list[Cluster]:
    a, b, s = brute_pairs(vec, t)
    return cluster_pairs(len(vec), a, b, s, t, Reader(vec), no_info(len(vec)), **kw)


def neighbours(count: int, a: np.ndarray, b: np.ndarray) -> list[set[int]]:
    nbrs: list[set[int]] = [set() for _ in range(count)]
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        nbrs[x].add(y)
        nbrs[y].add(x)
    return nbrs


def naive_components(count: int, a: np.ndarray, b: np.ndarray) -> set[frozenset[int]]:
    nbrs, seen, found = neighbours(count, a, b), set(), set()
    for start in range(count):
        if start in seen or not nbrs[start]:
            continue
        seen.add(start)
        part, queue = {start}, deque([start])
        while queue:
            for y in nbrs[queue.popleft()] - seen:
                seen.add(y)
                part.add(y)
                queue.append(y)
        found.add(frozenset(part))
    return found


def naive_greedy(vec: np.ndarray, a: np.ndarray, b: np.ndarray, s: np.ndarray, t: float) -> set[frozenset[int]]:
    """The no-chaining rule as the module docstring states it, one item at a time."""
    sim = vec.astype(np.float64) @ vec.astype(np.float64).T
    nbrs = neighbours(len(vec), a, b)
    score = {(x, y): v for x, y, v in zip(a.tolist(), b.tolist(), s.tolist(), strict=True)}
    left = {x for x in range(len(vec)) if nbrs[x]}
    found = set()
    while True:
        open_ = {x: nbrs[x] & left for x in left}
        seeds = [x for x in left if open_[x]]
        if not seeds:
            return found
        seed = max(seeds, key=lambda x: (len(open_[x]), math.fsum(score[min(x, y), max(x, y)] for y in open_[x]), -x))
        members = [seed]
        for y in sorted(open_[seed], key=lambda y: (-sim[seed, y], y)):
            if all(sim[m, y] >= t - TOL for m in members):
                members.append(y)
        left -= set(members)
        if len(members) > 1:
            found.add(frozenset(members))


def as_sets(found: list[Cluster]) -> set[frozenset[int]]:
    return {frozenset(c.members.tolist()) for c in found}


def check_described(c: Cluster, vec: np.ndarray) -> None:
    """Centre, closest, farthest and order equal brute force over the members' full Gram matrix."""
    m = np.sort(c.members)
    sim = vec[m].astype(np.float64) @ vec[m].astype(np.float64).T
    i, j = np.triu_indices(len(m), 1)
    assert c.closest[2] == pytest.approx(sim[i, j].max(), abs=TOL)
    assert c.closest[0] < c.closest[1] and {c.closest[0], c.closest[1]} <= set(m.tolist())
    x, y = np.searchsorted(m, c.closest[:2])
    assert sim[x, y] == pytest.approx(c.closest[2], abs=TOL)
    x, y = np.searchsorted(m, c.farthest[:2])
    assert c.farthest[0] < c.farthest[1] and sim[x, y] == pytest.approx(c.farthest[2], abs=TOL)
    mean = (sim.sum(axis=1) - np.diag(sim)) / (len(m) - 1)
    if c.exact_pairs:
        assert c.farthest[2] == pytest.approx(sim[i, j].min(), abs=TOL)
        assert mean[np.searchsorted(m, c.centre)] >= mean.max() - TOL
    else:
        assert c.farthest[2] >= sim[i, j].min() - TOL
    assert c.keeper == c.members[0] and c.centre in c.members
    to_centre = vec[c.members].astype(np.float64) @ vec[c.centre].astype(np.float64)
    np.testing.assert_allclose(c.to_centre, np.minimum(to_centre, 1.0), atol=TOL)
    rest = c.to_centre[1:]
    assert np.all(np.diff(rest) <= 0), "members after the keeper go by similarity to the centre"
    if c.keeper != c.centre:
        assert c.members[1] == c.centre


CASES = [(0, 50, 16, 0.9), (1, 300, 32, 0.9), (2, 800, 16, 0.85), (3, 2000, 64, 0.9), (4, 600, 24, 0.8)]


@pytest.mark.parametrize(("seed", "n", "d", "t"), CASES)
def test_chaining_gives_the_connected_components(seed: int, n: int, d: int, t: float) -> None:
    vec = clustered_vectors(seed, n, d)
    a, b, s = brute_pairs(vec, t)
    found = cluster_pairs(n, a, b, s, t, Reader(vec), no_info(n))
    assert as_sets(found) == naive_components(n, a, b)
    assert any(c.farthest[2] < t for c in found), "the data should chain"
    for c in found:
        check_described(c, vec)
    keys = [(-len(c.members), -c.closest[2], int(c.members.min())) for c in found]
    assert keys == sorted(keys)


@pytest.mark.parametrize(("seed", "n", "d", "t"), CASES)
def test_no_chaining_gives_the_greedy_cliques(seed: int, n: int, d: int, t: float) -> None:
    vec = clustered_vectors(seed, n, d)
    a, b, s = brute_pairs(vec, t)
    found = cluster_pairs(n, a, b, s, t, Reader(vec), no_info(n), chaining=False)
    assert as_sets(found) == naive_greedy(vec, a, b, s, t)
    sim = vec.astype(np.float64) @ vec.astype(np.float64).T
    taken = np.concatenate([c.members for c in found])
    assert len(np.unique(taken)) == len(taken), "clusters are disjoint"
    for c in found:
        assert sim[np.ix_(c.members, c.members)].min() >= t - TOL
        assert sim[c.centre, c.members].min() >= t - TOL
        check_described(c, vec)
    nbrs = neighbours(n, a, b)
    unclustered = set(range(n)) - set(taken.tolist())
    assert all(not (nbrs[x] & unclustered) for x in unclustered), "an unclustered item has no unassigned neighbour"
    assert len(found) > len(naive_components(n, a, b)), "the data should split some components"


@pytest.fixture
def small_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounds small enough that the test data takes every path: large clusters, samples, blocks, batches."""
    for name, value in [
        ("BATCHED_MAX_SIZE", 3),
        ("EXACT_MAX_MEMBERS", 40),
        ("GRAM_BLOCK_ROWS", 7),
        ("VECTOR_BATCH_ROWS", 50),
        ("CLIQUE_BLOCK", 5),
    ]:
        monkeypatch.setattr(mod, name, value)


@pytest.mark.parametrize("chaining", [True, False])
@pytest.mark.parametrize(("seed", "n", "d", "t"), [CASES[2], CASES[4]])
def test_every_path_agrees_under_small_bounds(small_bounds, seed, n, d, t, chaining) -> None:
    vec = clustered_vectors(seed, n, d)
    a, b, s = brute_pairs(vec, t)
    reader = Reader(vec)
    found = cluster_pairs(n, a, b, s, t, reader, no_info(n), chaining=chaining)
    expected = naive_components(n, a, b) if chaining else naive_greedy(vec, a, b, s, t)
    assert as_sets(found) == expected
    assert any(not c.exact_pairs for c in found) == chaining  # no-chaining clusters stay under 40 here
    for c in found:
        check_described(c, vec)
        assert c.exact_pairs == (len(c.members) <= 40)
    assert max(reader.calls) <= 50 or not chaining  # a no-chaining seed's neighbours may be read together
    if not chaining:
        assert max(reader.calls) <= max(50, 1 + max(len(x) for x in neighbours(n, a, b)))


def test_exact_and_batched_descriptions_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    vec = clustered_vectors(5, 600, 24)
    batched = run(vec, 0.85)
    monkeypatch.setattr(mod, "BATCHED_MAX_SIZE", 1)  # every cluster through the blocked Gram path
    monkeypatch.setattr(mod, "GRAM_BLOCK_ROWS", 3)
    blocked = run(vec, 0.85)
    assert [c.members.tolist() for c in batched] == [c.members.tolist() for c in blocked]
    for x, y in zip(batched, blocked, strict=True):
        assert (x.centre, x.farthest[:2], x.closest) == (y.centre, y.farthest[:2], y.closest)
        np.testing.assert_allclose(x.to_centre, y.to_centre, atol=TOL)


def unit_angles(degrees: list[float]) -> np.ndarray:
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def test_a_chain_is_one_cluster_only_with_chaining() -> None:
    abc = unit_angles([0, 25, 60])  # a-b 0.906, b-c 0.819, a-c 0.5
    [one] = run(abc, 0.8)
    assert sorted(one.members.tolist()) == [0, 1, 2] and one.farthest == (0, 2, pytest.approx(0.5, abs=TOL))
    assert one.centre == 1 and one.closest == (0, 1, pytest.approx(math.cos(math.radians(25)), abs=TOL))
    [ab] = run(abc, 0.8, chaining=False)  # b seeds, takes a (closer); c can't join a and has no one left
    assert sorted(ab.members.tolist()) == [0, 1]
    abcd = unit_angles([0, 25, 60, 85])
    assert as_sets(run(abcd, 0.8)) == {frozenset({0, 1, 2, 3})}
    assert as_sets(run(abcd, 0.8, chaining=False)) == {frozenset({0, 1}), frozenset({2, 3})}


def test_same_pairs_in_any_order_give_the_same_clusters() -> None:
    vec = clustered_vectors(6, 500, 16)
    a, b, s = brute_pairs(vec, 0.85)
    perm = np.random.default_rng(0).permutation(len(a))
    for chaining in (True, False):
        runs = [
            cluster_pairs(len(vec), a[p], b[p], s[p], 0.85, Reader(vec), no_info(len(vec)), chaining=chaining)
            for p in (np.arange(len(a)), np.arange(len(a)), perm)
        ]
        shown = [
            [(c.members.tolist(), c.to_centre.tolist(), c.centre, c.closest, c.farthest, c.keeper_reason) for c in r]
            for r in runs
        ]
        assert shown[0] == shown[1] == shown[2]


def test_no_pairs_no_clusters() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert cluster_pairs(0, empty, empty, np.zeros(0), 0.9, Reader(np.zeros((0, 4))), no_info(0)) == []
    vec = unit_angles([0, 90, 180])
    assert cluster_pairs(3, empty, empty, np.zeros(0), 0.9, Reader(vec), no_info(3), chaining=False) == []


# Four near-copies of one image: item 1 is the most central, then 0, 3, 2 (by distance from the base).
def four_copies() -> np.ndarray:
    x = np.zeros((4, 5))
    x[:, 0] = 1.0
    for item, eps in enumerate([0.1, 0.05, 0.2, 0.15]):
        x[item, item + 1] = eps
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def keep(rule: str, **info: object) -> Cluster:
    vec = four_copies()
    a, b, s = brute_pairs(vec, 0.9)
    [c] = cluster_pairs(
        4, a, b, s, 0.9, Reader(vec), ItemInfo(**{"time": np.zeros(4), **info}), keeper=KeeperRule.parse(rule)
    )
    return c


def attrs(values: dict[int, str]) -> object:
    return lambda item, key: values.get(item) if key == "price" else None


def test_central_keeper_and_order() -> None:
    c = keep("central")
    assert c.members.tolist() == [1, 0, 3, 2] and c.keeper == c.centre == 1
    assert c.keeper_reason.startswith("most central (mean similarity 0.9")


@pytest.mark.parametrize(
    ("rule", "info", "members", "reason"),
    [
        (
            "largest",
            {"pixels": np.array([100, 50, 300, 300])},
            [3, 1, 0, 2],
            "largest (300 px)",
        ),  # tie: 3 is more central
        ("largest", {"pixels": np.array([0, 0, 0, 0])}, [1, 0, 3, 2], "no pixel sizes; most central"),
        ("largest", {}, [1, 0, 3, 2], "no pixel sizes; most central"),
        ("largest", {"pixels": np.array([0, 0, 7, 0])}, [2, 1, 0, 3], "largest (7 px)"),
        (
            "earliest",
            {"time": np.array([5.0, 7.0, 3.0, 3.0])},
            [3, 1, 0, 2],
            "earliest (registered 1970-01-01T00:00:03Z)",
        ),
        (
            "latest",
            {"time": np.array([5.0, 1.7e9, 3.0, 3.0])},
            [1, 0, 3, 2],
            "latest (registered 2023-11-14T22:13:20Z)",
        ),
        ("earliest", {"time": np.full(4, np.nan)}, [1, 0, 3, 2], "no registration times; most central"),
        ("attribute:price", {"attribute": attrs({0: "10", 1: "9.5", 2: "100"})}, [2, 1, 0, 3], "highest price (100)"),
        (
            "attribute:price:min",
            {"attribute": attrs({0: "10", 1: "9.5", 2: "100"})},
            [1, 0, 3, 2],
            "lowest price (9.5)",
        ),
        ("attribute:price:max", {"attribute": attrs({0: "1e1", 2: "10.0"})}, [0, 1, 3, 2], "highest price (1e1)"),
        ("attribute:price", {"attribute": attrs({0: "10", 1: "9.5", 2: "100", 3: "abc"})}, [3, 1, 0, 2], "(abc)"),
        ("attribute:price:min", {"attribute": attrs({0: "10", 1: "9.5", 2: "100", 3: "abc"})}, [0, 1, 3, 2], "(10)"),
        ("attribute:price", {"attribute": attrs({0: "5", 2: "5", 3: "4"})}, [0, 1, 3, 2], "highest price (5)"),  # tie
        ("attribute:price", {"attribute": attrs({0: "50", 3: "inf"})}, [3, 1, 0, 2], "(inf)"),  # not finite: text
        ("attribute:price", {"attribute": attrs({})}, [1, 0, 3, 2], "no member has attribute 'price'; most central"),
        ("attribute:size", {"attribute": attrs({0: "10"})}, [1, 0, 3, 2], "no member has attribute 'size'"),
    ],
)
def test_keeper_rules(rule: str, info: dict, members: list[int], reason: str) -> None:
    c = keep(rule, **info)
    assert c.members.tolist() == members and c.keeper == members[0] and c.centre == 1
    assert reason in c.keeper_reason
    assert c.to_centre[c.members.tolist().index(1)] == 1.0


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", KeeperRule("central")),
        ("central", KeeperRule("central")),
        (" largest ", KeeperRule("largest")),
        ("earliest", KeeperRule("earliest")),
        ("latest", KeeperRule("latest")),
        ("attribute:price", KeeperRule("attribute", "price", True)),
        ("attribute:price:max", KeeperRule("attribute", "price", True)),
        ("attribute:price:min", KeeperRule("attribute", "price", False)),
        ("attribute:a:b", KeeperRule("attribute", "a:b", True)),
    ],
)
def test_keeper_rule_parses(text: str, rule: KeeperRule) -> None:
    assert KeeperRule.parse(text) == rule


@pytest.mark.parametrize("text", ["biggest", "attribute", "attribute:", "attribute::min", "central:x", "Largest"])
def test_keeper_rule_names_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a keeper rule; use one of .*attribute:KEY:min"):
        KeeperRule.parse(text)
    with pytest.raises(ValueError, match="use one of"):
        KeeperRule("attribute")


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([0, 1], [1], "one length"),
        ([0.0], [1.0], "integer item numbers"),
        ([0], [4], r"in 0\.\.3"),
        ([2], [2], "paired with itself"),
        ([0, 1], [1, 0], "listed twice"),
    ],
)
def test_bad_pairs_say_what_is_wrong(a: list, b: list, message: str) -> None:
    vec = four_copies()
    with pytest.raises(ValueError, match=message):
        cluster_pairs(4, np.array(a), np.array(b), np.full(len(a), 0.95), 0.9, Reader(vec), no_info(4))


def test_bad_vectors_and_info_say_what_is_wrong() -> None:
    vec = four_copies()
    a, b, s = brute_pairs(vec, 0.9)
    with pytest.raises(ValueError, match="returned shape"):
        cluster_pairs(4, a, b, s, 0.9, lambda items: vec[items][:-1], no_info(4))
    with pytest.raises(ValueError, match="one value per item"):
        cluster_pairs(4, a, b, s, 0.9, Reader(vec), ItemInfo(time=np.zeros(3)))


@pytest.mark.parametrize("size", [30, 60])  # one batched, one sampled under small bounds
def test_the_vectors_decide_who_joins_without_chaining(small_bounds, size: int) -> None:
    """A pair list that claims more than the vectors hold: chaining trusts the pairs, no-chaining the vectors."""
    rng = np.random.default_rng(size)
    vec = (np.ones((size + 1, 8)) + 0.01 * rng.standard_normal((size + 1, 8))).astype(np.float32)
    vec[size] = np.eye(8)[0] + 0.5  # similarity about 0.6 to the others
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    a, b = np.triu_indices(size + 1, 1)
    s = np.maximum((vec @ vec.T)[a, b], 0.95)  # every pair claimed at or above the threshold
    reader = Reader(vec)
    [chained] = cluster_pairs(size + 1, a, b, s, 0.95, reader, no_info(size + 1))
    assert len(chained.members) == size + 1 and chained.exact_pairs == (size + 1 <= 40)
    assert chained.farthest[0:2] == (int(np.argmin(vec[:size] @ vec[size])), size) or not chained.exact_pairs
    [alone] = cluster_pairs(size + 1, a, b, s, 0.95, reader, no_info(size + 1), chaining=False)
    assert sorted(alone.members.tolist()) == list(range(size)) and alone.exact_pairs == (size <= 40)
    check_described(alone, vec)
