"""Duplicate pairs to clusters: group them, find each cluster's centre, spread and suggested keeper.

The self-join (elsewhere) finds every pair of items at or above a cosine threshold. This module
sees only item numbers, pair scores and a way to read vectors, so it knows nothing of databases.

- Chaining (the default): a cluster is a connected component of the pairs; two members may be
  linked only through others, so ``farthest`` may be below the threshold.
- No chaining: greedy cliques. The unassigned item with the most unassigned neighbours (ties:
  higher summed pair score, then lower item) seeds a cluster; its unassigned neighbours join in
  order of similarity to it, each only if it is within the threshold of every member already in.
  The members leave the graph and the next seed is taken; an item left with no neighbour is in no
  cluster. The vectors decide "within the threshold" (the pairs only say whom to try), up to
  ``SCORE_TOLERANCE`` for float32 rounding. A component that is already a clique of pairs and
  whose member Gram matrix agrees is taken whole without the greedy loop (the greedy result).

Cost: grouping is one ``connected_components`` over the pairs; each pair is touched O(1) times.
Describing reads each member's vector once (no-chaining reads the members of non-clique components
twice) and costs O(s^2 d) per cluster of s <= ``EXACT_MAX_MEMBERS`` members, O(EXACT_MAX_MEMBERS^2 d
+ s d) above. The no-chaining clique check costs O(D^2 d) per seed with D unassigned neighbours,
as matrix products of ``CLIQUE_BLOCK`` candidates at a time; its Python work is one loop step per
seed and one bit-set operation per candidate. CPU seconds measured on one core of a shared 2-core
VM (d = 64): 1M items in 50k near-identical groups of 2-38 (12M pairs): 2.7 chaining, 3.1 without;
looser groups that split into 126k cliques: 3.0 chaining, 16 without (the per-seed Python loop);
20k near-identical items with 32 pairs each: 0.1 / 0.5; 10k items with all 50M pairs: 5.2 / 6.3.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from lookalike.server.core.dedup.keeper import ItemInfo, KeeperRule, choose_keeper
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["Cluster", "ItemInfo", "KeeperRule", "cluster_pairs"]

EXACT_MAX_MEMBERS = 4096  # above this, centre and farthest come from an evenly spaced sample of this many members
GRAM_BLOCK_ROWS = 2048  # rows of a Gram matrix computed at once: 2048 x 4096 float32 is 32 MiB
VECTOR_BATCH_ROWS = 16384  # most rows asked of ``vectors`` at once, unless one clique candidate set is larger
BATCHED_MAX_SIZE = 64  # clusters up to this size are described together, one batched product per size
CLIQUE_BLOCK = 256  # no-chaining candidates checked against each other as one small Gram matrix
SCORE_TOLERANCE = 1e-6  # float32 rounding between the join's scores and the products here
_SCORE_UNITS = 2.0**32  # summed pair scores are added as integers, so sums do not depend on pair order


@dataclass(frozen=True, eq=False)
class Cluster:
    """Items that are duplicates of each other, described."""

    members: np.ndarray  # int64: the keeper, then by similarity to the centre descending (ties: lower item)
    to_centre: np.ndarray  # float32 similarity of each member to the centre (1 for the centre)
    centre: int  # the member with the highest mean similarity to the others (ties: lower item)
    keeper: int
    keeper_reason: str  # "largest (2073600 px)", or the fallback: "no pixel sizes; most central"
    closest: tuple[int, int, float]  # the most similar pair of members (from the pairs when sampled: exact)
    farthest: tuple[int, int, float]  # the least similar pair (below the threshold is possible with chaining)
    exact_pairs: bool  # False: over EXACT_MAX_MEMBERS members, so centre and farthest come from a sample


Vectors = Callable[[np.ndarray], np.ndarray]


def cluster_pairs(
    count: int,
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    threshold: float,
    vectors: Vectors,
    info: ItemInfo,
    *,
    chaining: bool = True,
    keeper: KeeperRule = KeeperRule(),
) -> list[Cluster]:
    """Cluster items 0..count-1 from the pairs (a[i], b[i], score[i]) at or above ``threshold``.

    ``vectors(items)`` returns those items' L2-normalised float32 rows; it is called with at most
    ``VECTOR_BATCH_ROWS`` items (or one no-chaining seed's neighbours, if more). Items in no pair
    are in no cluster. Clusters come largest first, then by closest score descending, then by
    smallest member; the same pairs in any order give the same clusters.
    """
    a, b, score = _check_pairs(count, a, b, score)
    _check_info(count, info)
    read = _reader(vectors)
    components, upper = _components(count, a, b)
    if chaining:
        described = _describe(components, read)
    else:
        described = _without_chaining(count, components, a, b, score, threshold, read)
    sampled = [i for i, d in enumerate(described) if d.closest is None]
    for i in sampled:
        described[i] = described[i]._replace(closest=_closest(upper, score, described[i].members))
    clusters = [_finish(d, keeper, info) for d in described]
    clusters.sort(key=lambda c: (-len(c.members), -c.closest[2], int(c.members.min())))
    return clusters


def _check_pairs(count: int, a: np.ndarray, b: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, ...]:
    a, b, score = np.asarray(a), np.asarray(b), np.asarray(score)
    if not (a.ndim == 1 and a.shape == b.shape == score.shape):
        raise ValueError(
            f"a, b and score must be 1-D and of one length; got shapes {a.shape}, {b.shape}, {score.shape}"
        )
    if len(a) and not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise ValueError(f"a and b must hold integer item numbers; got {a.dtype} and {b.dtype}")
    a, b = a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)
    lo, hi = (a, b) if bool(np.all(a < b)) else (np.minimum(a, b), np.maximum(a, b))
    if len(a) and (lo.min() < 0 or hi.max() >= count):
        raise ValueError(f"item numbers must be in 0..{count - 1}; got {lo.min()}..{hi.max()}")
    if np.any(lo == hi):
        raise ValueError(f"item {int(lo[lo == hi][0])} is paired with itself; pass pairs of two items")
    score = score.astype(np.float64 if score.dtype != np.float32 else np.float32, copy=False)
    if not np.isfinite(score).all():
        raise ValueError("score contains NaN or infinite values")
    return lo, hi, score


def _check_info(count: int, info: ItemInfo) -> None:
    for name, values in (("time", info.time), ("pixels", info.pixels)):
        if values is not None and np.shape(values) != (count,):
            raise ValueError(f"ItemInfo.{name} must have one value per item ({count}); got shape {np.shape(values)}")


def _reader(vectors: Vectors) -> Vectors:
    def read(items: np.ndarray) -> np.ndarray:
        rows = np.asarray(vectors(items), dtype=np.float32)
        if rows.ndim != 2 or len(rows) != len(items):
            raise ValueError(f"vectors() returned shape {rows.shape} for {len(items)} items; return [items, d]")
        return rows

    return read


def _components(count: int, a: np.ndarray, b: np.ndarray) -> tuple[list[np.ndarray], csr_matrix]:
    """Connected components of two or more items, each as its ascending item numbers; the pairs as a matrix.

    Row a of the matrix holds its pairs (a, b > a), b ascending, each as its pair index + 1.
    """
    graph = coo_matrix((np.arange(1, len(a) + 1), (a, b)), shape=(count, count)).tocsr()  # sums duplicates
    if graph.nnz != len(a):
        raise ValueError("a pair is listed twice; pass each pair once")
    _, labels = connected_components(graph, directed=True, connection="weak")
    paired = np.zeros(count, dtype=bool)
    paired[a] = paired[b] = True
    items = np.flatnonzero(paired)
    labels = labels[items]
    order = np.argsort(labels, kind="stable")  # [n]: by component, items ascending within
    items, labels = items[order], labels[order]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(items) else np.zeros(0, np.int64)
    return (np.split(items, starts[1:]) if len(items) else []), graph


def _spans(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions of the entries of these rows of a CSR matrix, row by row."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


class _Described(NamedTuple):
    members: np.ndarray  # ascending item numbers
    centre: int  # position in members
    mean: float  # the centre's mean similarity to the others
    to_centre: np.ndarray  # float32 [s]
    closest: tuple[int, int, float] | None  # item, item, score; None: take it from the pairs
    farthest: tuple[int, int, float]
    exact: bool


def _describe(clusters: list[np.ndarray], read: Vectors) -> list[_Described]:
    """Centre, similarity to it, closest and farthest pair of each cluster, in the clusters' order."""
    out: list[_Described | None] = [None] * len(clusters)
    sizes = np.array([len(c) for c in clusters], dtype=np.int64)
    for s in np.unique(sizes[sizes <= BATCHED_MAX_SIZE]).tolist():
        ids = np.flatnonzero(sizes == s)
        step = max(1, VECTOR_BATCH_ROWS // s)
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            members = np.stack([clusters[i] for i in chunk])  # [k, s]
            for i, described in zip(chunk.tolist(), _describe_batch(members, read), strict=True):
                out[i] = described
    for i in np.flatnonzero(sizes > BATCHED_MAX_SIZE).tolist():
        out[i] = _describe_large(clusters[i], read)
    return out  # type: ignore[return-value]


def _describe_batch(members: np.ndarray, read: Vectors) -> list[_Described]:
    k, s = members.shape
    vec = read(members.reshape(-1)).reshape(k, s, -1)  # [k, s, d]
    gram = np.matmul(vec, vec.transpose(0, 2, 1))  # [k, s, s]
    diag = np.einsum("kii->ki", gram)  # [k, s]
    mean = (gram.sum(axis=2, dtype=np.float64) - diag) / (s - 1)  # [k, s]
    centre = mean.argmax(axis=1)  # [k]: the first maximum is the lowest item
    above = np.triu(np.ones((s, s), dtype=bool), 1).reshape(-1)  # the pairs i < j
    flat = gram.reshape(k, s * s)
    far = np.where(above, flat, np.inf).argmin(axis=1)  # [k]: the first extreme in row-major order is the
    near = np.where(above, flat, -np.inf).argmax(axis=1)  # [k]  lowest pair
    rows = np.arange(k)
    to_centre = gram[rows, centre]  # [k, s]
    to_centre[rows, centre] = 1.0
    m = members.tolist()
    return [
        _Described(
            members[r], c, mu, to_centre[r], (m[r][n // s], m[r][n % s], ns), (m[r][f // s], m[r][f % s], fs), True
        )
        for r, c, mu, n, ns, f, fs in zip(
            rows.tolist(),
            centre.tolist(),
            mean[rows, centre].tolist(),
            near.tolist(),
            flat[rows, near].tolist(),
            far.tolist(),
            flat[rows, far].tolist(),
            strict=True,
        )
    ]


def _describe_large(members: np.ndarray, read: Vectors) -> _Described:
    s = len(members)
    exact = s <= EXACT_MAX_MEMBERS
    picked = np.arange(s) if exact else np.linspace(0, s - 1, EXACT_MAX_MEMBERS).round().astype(np.int64)
    vec = read(members[picked])  # [n, d]
    n = len(picked)
    rowsum = np.empty(n)
    far, near = (math.inf, 0, 0), (-math.inf, 0, 0)
    for r0 in range(0, n, GRAM_BLOCK_ROWS):
        block = vec[r0 : r0 + GRAM_BLOCK_ROWS] @ vec.T  # [rb, n]
        rows = np.arange(r0, r0 + len(block))
        rowsum[rows] = block.sum(axis=1, dtype=np.float64) - block[rows - r0, rows]
        below = np.arange(n)[None, :] <= rows[:, None]  # [rb, n]: keep the pairs j > i
        at = int(np.where(below, -np.inf, block).argmax())
        if block.flat[at] > near[0]:  # strictly: an equal pair in a later block is a higher pair
            near = (float(block.flat[at]), r0 + at // n, at % n)
        block[below] = np.inf
        at = int(block.argmin())
        if block.flat[at] < far[0]:
            far = (float(block.flat[at]), r0 + at // n, at % n)
    mean = rowsum / (n - 1)
    c = int(mean.argmax())
    centre_vec = vec[c]
    if exact:
        to_centre = vec @ centre_vec
    else:
        to_centre = np.concatenate(
            [read(members[i : i + VECTOR_BATCH_ROWS]) @ centre_vec for i in range(0, s, VECTOR_BATCH_ROWS)]
        )
    centre = int(picked[c])
    to_centre[centre] = 1.0
    farthest = (int(members[picked[far[1]]]), int(members[picked[far[2]]]), far[0])
    closest = (int(members[near[1]]), int(members[near[2]]), near[0]) if exact else None
    return _Described(members, centre, float(mean[c]), to_centre.astype(np.float32), closest, farthest, exact)


def _without_chaining(
    count: int,
    components: list[np.ndarray],
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    threshold: float,
    read: Vectors,
) -> list[_Described]:
    """Components that are cliques by their vectors too stay whole; the rest go through the greedy."""
    sizes = np.array([len(c) for c in components], dtype=np.int64)
    owner = np.full(count, -1, dtype=np.int64)
    if components:
        owner[np.concatenate(components)] = np.repeat(np.arange(len(components)), sizes)
    edges = np.bincount(owner[a], minlength=len(components))
    whole = np.flatnonzero((edges == sizes * (sizes - 1) // 2) & (sizes <= VECTOR_BATCH_ROWS))
    floor = threshold - SCORE_TOLERANCE
    kept, greedy = [], np.ones(len(components), dtype=bool)
    for i, described in zip(whole.tolist(), _describe([components[i] for i in whole], read), strict=True):
        exact = described.exact or _min_similarity(read(components[i])) >= floor  # a sample's is not enough
        if described.farthest[2] >= floor and exact:
            kept.append(described)
            greedy[i] = False
    todo = np.flatnonzero(greedy).tolist()
    if not todo:
        return kept
    graph = _graph(count, *(x[greedy[owner[a]]] for x in (a, b, score)))
    found: list[np.ndarray] = []
    while todo:  # components read together, up to VECTOR_BATCH_ROWS items at a time
        batch = [todo.pop()]
        rows = int(sizes[batch[0]])
        while todo and rows + sizes[todo[-1]] <= VECTOR_BATCH_ROWS:
            rows += int(sizes[todo[-1]])
            batch.append(todo.pop())
        items = np.concatenate([components[i] for i in batch])
        vec = read(items) if len(items) <= VECTOR_BATCH_ROWS else None
        graph.row[items] = np.arange(len(items))
        for i in batch:
            small = vec is not None and sizes[i] <= BATCHED_MAX_SIZE
            found += (
                _greedy_small(components[i], graph, floor, vec)
                if small
                else _greedy(components[i], graph, floor, vec, read)
            )
    return kept + _describe(found, read)


class _Graph(NamedTuple):
    """The pairs as a symmetric graph over all items, and the greedy's state; components never share items."""

    indptr: np.ndarray  # [count + 1]
    nbrs: np.ndarray  # each item's neighbours
    units: np.ndarray  # their pair scores in _SCORE_UNITS
    degree: np.ndarray  # [count] unassigned neighbours, kept current
    weight: np.ndarray  # [count] their summed scores in _SCORE_UNITS, kept current
    alive: np.ndarray  # [count] not yet assigned
    row: np.ndarray  # [count] the item's row in the vectors read for its component


def _min_similarity(vec: np.ndarray) -> float:
    return min(float((vec[r0 : r0 + GRAM_BLOCK_ROWS] @ vec.T).min()) for r0 in range(0, len(vec), GRAM_BLOCK_ROWS))


def _graph(count: int, a: np.ndarray, b: np.ndarray, score: np.ndarray) -> _Graph:
    units = np.rint(score * _SCORE_UNITS).astype(np.int64)
    both = (np.concatenate([units, units]), (np.concatenate([a, b]), np.concatenate([b, a])))
    adj = coo_matrix(both, shape=(count, count)).tocsr()
    total = np.concatenate([[0], np.cumsum(adj.data)])
    weight = total[adj.indptr[1:]] - total[adj.indptr[:-1]]
    degree = np.diff(adj.indptr).astype(np.int64)
    return _Graph(adj.indptr, adj.indices, adj.data, degree, weight, np.ones(count, bool), np.zeros(count, np.int64))


def _greedy(members: np.ndarray, g: _Graph, floor: float, vec: np.ndarray | None, read: Vectors) -> list[np.ndarray]:
    """Greedy cliques of one component (see the module docstring), each as ascending items."""
    heap = list(zip((-g.degree[members]).tolist(), (-g.weight[members]).tolist(), members.tolist(), strict=True))
    heapq.heapify(heap)  # keys only fall, so a stored key is an upper bound: refresh it when it surfaces
    found, left = [], len(members)
    while heap:
        d, w, i = heapq.heappop(heap)
        if not g.alive[i]:
            continue
        if (d, w) != (-int(g.degree[i]), -int(g.weight[i])):
            heapq.heappush(heap, (-int(g.degree[i]), -int(g.weight[i]), i))
            continue
        if d == 0:
            break  # every item left has no unassigned neighbour
        nbrs = g.nbrs[g.indptr[i] : g.indptr[i + 1]]
        cand = np.concatenate([[i], nbrs[g.alive[nbrs]]])  # the seed, then its unassigned neighbours
        taken = cand[_clique(vec[g.row[cand]] if vec is not None else read(cand), cand, floor)]
        if len(taken) > 1:
            found.append(np.sort(taken))
        g.alive[taken] = False
        left -= len(taken)
        if left == 0:
            break
        spans = _spans(g.indptr, taken)
        touched = spans[g.alive[g.nbrs[spans]]]
        np.subtract.at(g.degree, g.nbrs[touched], 1)
        np.subtract.at(g.weight, g.nbrs[touched], g.units[touched])
    return found


def _greedy_small(members: np.ndarray, g: _Graph, floor: float, vec: np.ndarray) -> list[np.ndarray]:
    """``_greedy`` for a small component, on dense [n, n] matrices and bit sets: a few numpy calls per seed."""
    n, first = len(members), int(g.row[members[0]])
    gram = vec[first : first + n] @ vec[first : first + n].T  # [n, n]: the component's rows are contiguous
    close = np.packbits(gram >= floor, axis=1, bitorder="little")  # [n, n/8]: row i's bit set, read when i joins
    spans = _spans(g.indptr, members)
    units = np.zeros((n, n))  # pair scores in _SCORE_UNITS (integers, exact in float64), 0: no pair
    units[np.repeat(np.arange(n), g.indptr[members + 1] - g.indptr[members]), g.row[g.nbrs[spans]] - first] = g.units[
        spans
    ]
    paired = (units != 0).astype(np.float64)
    alive = np.ones(n)
    found = []
    while True:
        degree = paired @ alive  # [n]; a degree and a summed score fit one exact key: 64 * 2**40 + 64 * 2**32
        key = np.where((alive > 0) & (degree > 0), degree * 2.0**40 + units @ alive, -1.0)
        seed = int(key.argmax())  # ties: the lower item
        if key[seed] < 0:
            return found
        cand = np.flatnonzero(paired[seed] * alive)
        taken, ok = [seed], _bits(close[seed])
        for y in cand[np.lexsort((cand, -gram[seed, cand]))].tolist():
            if ok >> y & 1:
                taken.append(y)
                ok &= _bits(close[y])
        alive[taken] = 0
        if len(taken) > 1:
            found.append(members[np.sort(taken)])


def _clique(vec: np.ndarray, items: np.ndarray, floor: float) -> np.ndarray:
    """Rows of ``vec`` joining row 0's clique: in order of similarity to it, each if >= floor to all before."""
    to_seed = vec[1:] @ vec[0]  # [D]
    cand = np.flatnonzero(to_seed >= floor)
    cand = cand[np.lexsort((items[1:][cand], -to_seed[cand]))] + 1  # ties: the lower item
    open_ = np.ones(len(cand), dtype=bool)  # still within the threshold of every member taken
    taken = [np.zeros(1, dtype=np.int64)]
    for start in range(0, len(cand), CLIQUE_BLOCK):
        block = cand[start : start + CLIQUE_BLOCK]
        inside = np.packbits((vec[block] @ vec[block].T) >= floor, axis=1, bitorder="little")  # [B, B/8]
        ok = _bits(np.packbits(open_[start : start + len(block)], bitorder="little"))
        picked = []
        for r, row in enumerate(inside):  # bit sets: one Python int operation per candidate
            if ok >> r & 1:
                picked.append(r)
                ok &= _bits(row)
        if not picked:
            continue
        taken.append(block[picked])
        rest = np.flatnonzero(open_[start + len(block) :]) + start + len(block)
        if len(rest):
            near = vec[cand[rest]] @ vec[block[picked]].T  # [R, P]
            open_[rest] = (near >= floor).all(axis=1)
    return np.concatenate(taken)


def _bits(packed: np.ndarray) -> int:
    return int.from_bytes(packed.tobytes(), "little")


def _closest(upper: csr_matrix, score: np.ndarray, members: np.ndarray) -> tuple[int, int, float]:
    """A sampled cluster's highest-scoring pair (ties: the lowest pair), from the pairs."""
    spans = _spans(upper.indptr, members)  # the members' pairs, lowest first
    inside = np.zeros(upper.shape[0], dtype=bool)
    inside[members] = True
    spans = spans[inside[upper.indices[spans]]]
    scores = score[upper.data[spans] - 1]
    at = int(scores.argmax())  # the first maximum: the lowest pair
    row = int(members[np.searchsorted(upper.indptr[members + 1], spans[at], side="right")])
    return row, int(upper.indices[spans[at]]), float(scores[at])


def _finish(d: _Described, rule: KeeperRule, info: ItemInfo) -> Cluster:
    to_centre = np.minimum(d.to_centre, np.float32(1.0))  # float32 rounding can pass 1
    key = to_centre.astype(np.float64)
    key[d.centre] = np.inf
    ranked = np.argsort(-key, kind="stable")  # positions: the centre, then by similarity, ties the lower item
    at, reason = choose_keeper(d.members[ranked], d.mean, rule, info)
    order = ranked if at == 0 else np.concatenate((ranked[at : at + 1], ranked[:at], ranked[at + 1 :]))
    members = d.members[order].astype(np.int64)
    return Cluster(
        members=members,
        to_centre=to_centre[order],
        centre=int(d.members[d.centre]),
        keeper=int(members[0]),
        keeper_reason=reason,
        closest=d.closest,
        farthest=d.farthest,
        exact_pairs=d.exact,
    )
