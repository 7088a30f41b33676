"""Restart a server whose database has an HNSW graph: it answers at once, the saved graph comes back in
the background (no rebuild), and a delete made right after the restart never comes back in a result.

Driven as a user would: ``lookalike serve`` as a process, vectors registered over gRPC, SIGTERM, start again.
"""

from __future__ import annotations

import json
import time

import numpy as np
from lookalike.client import BulkItem, LookalikeClient
from served import serving

DIM = 1280  # the default model's output dimension: a database of raw vectors must match it
N = 6000
FLAGS = ("--hnsw-threshold", "5000")


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, DIM)).astype(np.float32)
    v = centres[rng.integers(0, 60, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def top10(c: LookalikeClient, q: np.ndarray) -> tuple[list[tuple[str, int]], str]:
    r = c.search("big", vector=q.tolist(), top_k=10)
    return [(h.key.group_id, h.key.intra_id) for h in r.hits], r.index


def until_graph(c: LookalikeClient, q: np.ndarray, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while top10(c, q)[1] != "hnsw":
        assert time.monotonic() < deadline, "the graph never answered"
        time.sleep(0.1)


def overlap(a: list[tuple[str, int]], b: list[tuple[str, int]]) -> float:
    return len(set(a) & set(b)) / 10


def messages(log_text: str) -> list[str]:
    return [json.loads(line).get("message", "") for line in log_text.splitlines() if line.startswith("{")]


def test_a_restart_answers_at_once_and_brings_the_saved_graph_back_without_a_rebuild(tmp_path):
    x, queries = clustered(N, 1), clustered(20, 2)
    with serving(tmp_path, *FLAGS) as s, LookalikeClient(s.grpc, timeout=120) as c:
        c.create_database("big")
        for a in range(0, N, 1000):
            r = c.bulk_set(
                "big", (BulkItem(f"g{i % 300}", intra_id=i, vector=x[i].tolist()) for i in range(a, a + 1000))
            )
            assert r.succeeded_count == 1000 and not r.failures, r
        until_graph(c, queries[0])
        before = [top10(c, q)[0] for q in queries]
    first = messages(s.log.read_text())
    assert any("HNSW graph of 'big' ready" in m for m in first)  # built once, then saved by the stop's snapshot

    with serving(tmp_path, *FLAGS) as s, LookalikeClient(s.grpc, timeout=120) as c:
        hits, _ = top10(c, queries[0])  # answers whichever tier is in: the rows are there at once
        assert overlap(hits, before[0]) >= 0.9
        gone = before[1][0]
        c.delete_image("big", *gone)  # maybe while the graph is still loading: it must reach the graph
        until_graph(c, queries[0])
        after = [top10(c, q)[0] for q in queries]
    assert all(gone not in a for a in after)
    assert overlap(after[1], before[1]) >= 0.8  # the rest of its neighbours are still found
    assert np.mean([overlap(a, b) for a, b in zip(after, before, strict=True)]) >= 0.95  # the same graph
    again = messages(s.log.read_text())
    assert any("HNSW graph of 'big' loaded: 6000 images" in m for m in again), again
    assert not any("ready:" in m or "rebuil" in m or "dropped" in m for m in again if "HNSW" in m), again
