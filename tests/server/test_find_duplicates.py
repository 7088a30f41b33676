"""FindDuplicates through a real server: pairs and clusters against a brute-force reference, the operation's life.

Vectors are registered directly (the model's 1280 dimensions), so the expected answer is
computed exactly with numpy: every pair at or above the threshold, connected components with
chaining, cliques around a centre without.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

DIM = 1280


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def catalogue(n: int, copies: int, seed: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``n`` unrelated vectors, then ``copies`` near-copies of some of them (and chains of copies)."""
    rng = np.random.default_rng(seed)
    base = unit(rng.standard_normal((n, DIM)))
    out, planted = [base], []
    for j in range(copies):
        src = int(rng.integers(0, n))
        noise = 0.02 if j % 3 else 0.06  # every third copy is farther off
        out.append(unit(base[src] + noise * unit(rng.standard_normal(DIM)))[None])
        planted.append((src, n + j))
    return np.concatenate(out), planted


def brute_pairs(x: np.ndarray, t: float) -> set[tuple[int, int]]:
    s = x @ x.T
    a, b = np.nonzero(np.triu(s >= t, 1))
    return set(zip(a.tolist(), b.tolist(), strict=True))


def components(n: int, pairs: set[tuple[int, int]]) -> set[frozenset[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups: dict[int, set[int]] = {}
    for a, b in pairs:
        groups.setdefault(find(a), set()).update((a, b))
    return {frozenset(g) for g in groups.values()}


def serve(data_dir: Path, hnsw_threshold: int, **settings: object) -> Iterator[object]:
    from lookalike.client import LookalikeClient
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    running = create_server(ServerConfig(port=0, data_dir=data_dir, hnsw_threshold=hnsw_threshold,
                                         dedup_block_seconds=0.05, **settings))  # fmt: skip
    try:
        with LookalikeClient(running.address) as c:
            yield c
    finally:
        running.stop(0)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """No HNSW graph (its background build would share the CPU with the jobs)."""
    yield from serve(tmp_path_factory.mktemp("dedup"), 0)


@pytest.fixture(scope="module")
def graph_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A graph from 500 images, so method "graph" has one."""
    yield from serve(tmp_path_factory.mktemp("dedup-graph"), 500)


def register(client: object, name: str, x: np.ndarray) -> None:
    from lookalike.client import BulkItem

    client.create_database(name)  # type: ignore[attr-defined]
    items = [BulkItem(f"g{i:05d}", vector=v.tolist(), attributes={"n": str(i)}) for i, v in enumerate(x)]
    for a in range(0, len(items), 500):
        assert client.bulk_set(name, items[a : a + 500]).failed_count == 0  # type: ignore[attr-defined]


def run(client: object, name: str, **options: object) -> tuple[object, list[object]]:
    op = client.find_duplicates(name, **options)  # type: ignore[attr-defined]
    op = client.wait_done(op.name, interval=0.2)  # type: ignore[attr-defined]
    assert op.state == 2, (op.state, op.error)  # SUCCEEDED
    return op, list(client.duplicate_clusters(op.name, page_size=7))  # type: ignore[attr-defined]


def members(cluster: object) -> frozenset[int]:
    return frozenset(int(m.key.group_id[1:]) for m in cluster.members)  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["exact", "graph"])
def test_clusters_equal_connected_components_of_the_exact_pairs(
    client: object, graph_client: object, method: str
) -> None:
    if method == "graph":
        client = graph_client
        deadline = time.monotonic() + 60
    x, planted = catalogue(1500, 120, seed=1)
    t = 0.95
    name = f"dedup-chain-{method}"
    register(client, name, x)
    expected = brute_pairs(x, t)
    assert {(a, b) for a, b in planted} <= expected | {(b, a) for a, b in planted}  # the copies are pairs
    while method == "graph" and time.monotonic() < deadline:  # the graph builds in the background
        if client.search(name, vector=x[0].tolist(), top_k=1).index == "hnsw":  # type: ignore[attr-defined]
            break
        time.sleep(0.2)
    op, clusters = run(client, name, threshold=t, method=method)
    result = op.find_duplicates
    assert result.method == method and result.image_count == len(x)
    if method == "exact":
        assert result.pair_count == len(expected)
        assert {members(c) for c in clusters} == components(len(x), expected)
    else:  # the graph's neighbours: planted near-copies are close enough for any graph to find
        assert {members(c) for c in clusters} <= components(len(x), expected) | {
            g for g in (members(c) for c in clusters) if any(g <= e for e in components(len(x), expected))
        }
        found = {frozenset(p) for c in clusters for p in [(a, b) for a in members(c) for b in members(c) if a < b]}
        assert sum(frozenset(p) in found for p in planted) >= 0.95 * len(planted)
    assert result.cluster_count == len(clusters)
    assert result.clustered_image_count == sum(len(c.members) for c in clusters)
    assert result.removable_count == result.clustered_image_count - result.cluster_count
    for c in clusters:  # keeper first; the closest and farthest pair are the extremes of the members' pairs
        ids = sorted(members(c))
        s = x[ids] @ x[ids].T
        off = s[np.triu_indices(len(ids), 1)]
        assert c.closest.score == pytest.approx(off.max(), abs=1e-4)
        assert c.farthest.score == pytest.approx(off.min(), abs=1e-4)
        assert (c.members[0].key.group_id, c.members[0].key.intra_id) == (c.keeper.group_id, c.keeper.intra_id)
    sizes = [len(c.members) for c in clusters]
    assert sizes == sorted(sizes, reverse=True)
    client.delete_database(name)  # type: ignore[attr-defined]


def test_without_chaining_every_member_pair_is_above_the_threshold(client: object) -> None:
    rng = np.random.default_rng(7)
    a = unit(rng.standard_normal(DIM))
    step = unit(rng.standard_normal(DIM))
    chain = unit(np.stack([a + k * 0.35 * step for k in range(6)]))  # neighbours alike, the ends not
    x = np.concatenate([chain, unit(rng.standard_normal((200, DIM)))])
    s = x @ x.T
    t = float(np.sort(np.diag(s, 1)[:5])[0]) - 1e-3  # every link of the chain is a pair
    assert s[0, 5] < t  # the ends are not
    register(client, "dedup-nochain", x)
    _, chained = run(client, "dedup-nochain", threshold=t)
    assert frozenset(range(6)) in {members(c) for c in chained}
    _, strict = run(client, "dedup-nochain", threshold=t, no_chaining=True, keeper="earliest")
    for c in strict:
        ids = sorted(members(c))
        sub = s[np.ix_(ids, ids)]
        assert sub.min() >= t - 1e-5, "a cluster without chaining holds two members below the threshold"
        centre = int(c.centre.group_id[1:])
        assert all(s[centre, i] >= t - 1e-5 for i in ids)
    assert len(strict) >= 2  # the chain was cut
    client.delete_database("dedup-nochain")  # type: ignore[attr-defined]


def test_deleted_images_are_left_out_and_pages_cover_every_cluster(client: object) -> None:
    x, planted = catalogue(400, 40, seed=3)
    register(client, "dedup-deleted", x)
    gone = planted[0][1]
    client.delete_image("dedup-deleted", f"g{gone:05d}", 0)  # type: ignore[attr-defined]
    op, clusters = run(client, "dedup-deleted", threshold=0.95)
    assert all(gone not in members(c) for c in clusters)
    everything = list(client.duplicate_clusters(op.name, page_size=1000))  # type: ignore[attr-defined]
    assert [members(c) for c in everything] == [members(c) for c in clusters]  # pages of 7 == one page
    client.delete_database("dedup-deleted")  # type: ignore[attr-defined]


def test_writes_and_searches_go_on_while_a_job_runs(client: object) -> None:
    """The job works outside the database lock in blocks of --dedup-block-seconds: a writer and a searcher
    beside it are never held for the job's duration."""
    rng = np.random.default_rng(5)
    x = unit(rng.standard_normal((12000, DIM)))
    register(client, "dedup-busy", x)
    op = client.find_duplicates("dedup-busy", threshold=0.9, method="exact")  # type: ignore[attr-defined]
    started, worst, done = time.monotonic(), 0.0, 0
    while not client.get_operation(op.name).done:  # type: ignore[attr-defined]
        t0 = time.monotonic()
        client.set_image("dedup-busy", "live", vector=x[done % 100].tolist())  # type: ignore[attr-defined]
        client.search("dedup-busy", vector=x[done % 100].tolist(), top_k=3)  # type: ignore[attr-defined]
        worst = max(worst, time.monotonic() - t0)
        done += 1
    took = time.monotonic() - started
    assert done >= 5, "the job finished before anything ran beside it; make the database larger"
    assert worst < max(1.0, took / 3), f"a write+search waited {worst:.2f}s during a {took:.2f}s job"
    client.delete_database("dedup-busy")  # type: ignore[attr-defined]


def test_operation_calls_and_their_errors(client: object) -> None:
    from lookalike.client import ClientError

    x, _ = catalogue(300, 10, seed=4)
    register(client, "dedup-ops", x)
    op, _ = run(client, "dedup-ops", threshold=0.95)
    got = client.get_operation(op.name)  # type: ignore[attr-defined]
    assert got.done and got.database == "dedup-ops" and got.find_duplicates_request.threshold == pytest.approx(0.95)
    assert got.progress.fraction == 1.0
    assert op.name in [o.name for o in client.list_operations("dedup-ops")]  # type: ignore[attr-defined]
    assert client.cancel_operation(op.name).state == 2  # type: ignore[attr-defined]  # finished: unchanged
    cases = [
        (lambda: client.get_operation("operations/0000000000000000"), "NOT_FOUND", "OPERATION_NOT_FOUND"),
        (lambda: client.get_operation("nope"), "INVALID_ARGUMENT", "OPERATION_NAME_INVALID"),
        (lambda: client.find_duplicates("dedup-ops", threshold=1.5), "INVALID_ARGUMENT", "THRESHOLD_INVALID"),
        (lambda: client.find_duplicates("dedup-ops", tier="twins"), "INVALID_ARGUMENT", "TIER_INVALID"),
        (lambda: client.find_duplicates("dedup-ops", threshold=0.9, keeper="tallest"), "INVALID_ARGUMENT",
         "KEEPER_INVALID"),
        (lambda: client.find_duplicates("dedup-ops", threshold=0.9, method="magic"), "INVALID_ARGUMENT",
         "METHOD_INVALID"),
        (lambda: client.find_duplicates("no-such-db", threshold=0.9), "NOT_FOUND", "DATABASE_NOT_FOUND"),
        (lambda: client.wait_operation(op.name, 61), "INVALID_ARGUMENT", "TIMEOUT_INVALID"),
    ]  # fmt: skip
    for call, code, reason in cases:
        with pytest.raises(ClientError) as err:
            call()  # type: ignore[no-untyped-call]
        assert (err.value.code, err.value.reason) == (code, reason), err.value
    client.delete_operation(op.name)  # type: ignore[attr-defined]
    with pytest.raises(ClientError, match="OPERATION_NOT_FOUND"):
        client.get_operation(op.name)  # type: ignore[attr-defined]
    client.delete_database("dedup-ops")  # type: ignore[attr-defined]


def test_cancel_stops_a_running_job_and_its_clusters_are_not_readable(client: object) -> None:
    from lookalike.client import ClientError

    rng = np.random.default_rng(9)
    register(client, "dedup-cancel", unit(rng.standard_normal((12000, DIM))))
    op = client.find_duplicates("dedup-cancel", threshold=0.9, method="exact")  # type: ignore[attr-defined]
    client.cancel_operation(op.name)  # type: ignore[attr-defined]
    op = client.wait_done(op.name, interval=0.2)  # type: ignore[attr-defined]
    assert op.state == 4 and op.progress.fraction < 1.0  # CANCELLED before the end
    with pytest.raises(ClientError) as err:
        list(client.duplicate_clusters(op.name))  # type: ignore[attr-defined]
    assert err.value.reason == "OPERATION_NOT_DONE"
    client.delete_database("dedup-cancel")  # type: ignore[attr-defined]


def test_operations_resume_from_their_checkpoint(tmp_path: Path) -> None:
    """A runner stopped by shutdown (what kill -9 leaves too: the last checkpoint) continues from it."""
    from lookalike.server.core.operations import Context, Operations

    calls: list[int] = []
    gate = threading.Event()

    def runner(ctx: Context) -> dict[str, int]:
        state = ctx.folder / "step"
        step = int(state.read_text()) if state.exists() else 0
        while step < 10:
            ctx.check()
            calls.append(step)
            step += 1
            state.write_text(str(step))
            if step == 4:
                gate.set()
                time.sleep(0.3)
        return {"steps": step}

    ops = Operations(tmp_path, {"count": runner})
    op = ops.start("count", "db", {})
    gate.wait(5)
    ops.close()  # shutdown: the runner stops at its next check and stays RUNNING on disk
    assert ops.get(op.name).state == "RUNNING"
    again = Operations(tmp_path, {"count": runner})
    again.recover()
    done = again.wait(op.name, 10)
    assert done.state == "SUCCEEDED" and done.result == {"steps": 10} and done.resumed == 1
    assert calls[:4] == [0, 1, 2, 3] and sorted(set(calls)) == list(range(10))
    assert len(calls) <= 11  # resumed from the checkpoint: at most the step in progress is done twice


def test_a_database_deleted_or_recreated_during_a_job_fails_it_clearly(client: object) -> None:
    rng = np.random.default_rng(10)
    x = unit(rng.standard_normal((12000, DIM)))
    register(client, "dedup-replaced", x)
    op = client.find_duplicates("dedup-replaced", threshold=0.9, method="exact")  # type: ignore[attr-defined]
    client.delete_database("dedup-replaced")  # type: ignore[attr-defined]
    register(client, "dedup-replaced", x[:100])  # same name, a new database: its image ids start again
    op = client.wait_done(op.name, interval=0.2)  # type: ignore[attr-defined]
    assert op.state == 3 and op.error.reason in ("DATABASE_REPLACED", "DATABASE_NOT_FOUND"), op
    assert "start again" in op.error.message or "does not exist" in op.error.message
    client.delete_database("dedup-replaced")  # type: ignore[attr-defined]


def test_a_threshold_that_pairs_most_of_the_catalogue_stops_with_a_clear_error(tmp_path: Path) -> None:
    for c in serve(tmp_path, 0, dedup_max_pairs=1000):
        register(c, "dedup-low", catalogue(300, 0, seed=2)[0])
        op = c.wait_done(c.find_duplicates("dedup-low", threshold=-0.9).name, interval=0.2)  # type: ignore[attr-defined]
        assert op.state == 3 and op.error.reason == "TOO_MANY_PAIRS" and op.error.code == 8, op  # RESOURCE_EXHAUSTED
        assert "raise the threshold" in op.error.message
        op = c.wait_done(c.find_duplicates("dedup-low", threshold=0.9).name, interval=0.2)  # type: ignore[attr-defined]
        assert op.state == 2 and op.find_duplicates.pair_count == 0


def test_threshold_one_finds_every_identical_copy(client: object) -> None:
    """A unit vector's product with itself rounds to 1 - a few ulps in float32: 1 must still mean identical."""
    x = unit(np.random.default_rng(21).standard_normal((40, DIM)))
    register(client, "dedup-identical", np.concatenate([x, x]))  # image i and i + 40 are the same vector
    op, clusters = run(client, "dedup-identical", threshold=1.0)
    assert {members(c) for c in clusters} == {frozenset((i, i + 40)) for i in range(40)}
    assert op.find_duplicates.threshold == pytest.approx(1.0, abs=2e-6)
    client.delete_database("dedup-identical")  # type: ignore[attr-defined]


def test_a_cancel_asked_before_a_crash_is_not_undone_by_the_restart(tmp_path: Path) -> None:
    import json

    from lookalike.server.core.operations import Operations

    ran: list[str] = []
    (tmp_path / "abcd").mkdir()
    state = {"id": "abcd", "kind": "count", "database": "db", "request": {}, "state": "RUNNING",
             "cancel_requested": True}  # fmt: skip
    (tmp_path / "abcd" / "operation.json").write_text(json.dumps(state))
    ops = Operations(tmp_path, {"count": lambda ctx: ran.append("ran") or {}})
    ops.recover()
    assert ops.get("operations/abcd").state == "CANCELLED" and ran == []
    again = Operations(tmp_path, {"count": lambda ctx: ran.append("ran") or {}})
    again.recover()  # and it stays so on disk
    assert again.get("operations/abcd").state == "CANCELLED" and ran == []
