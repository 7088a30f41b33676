"""The in-memory Database against a naive dict + numpy model, through enough churn to compact."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from lookalike.server.core.database import Database
from lookalike.server.core.errors import LookalikeError

DIM = 8


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def naive_search(model: dict, q: np.ndarray, k: int, *, one_per_group: bool = False, min_score: float | None = None):
    ranked = sorted(model.items(), key=lambda kv: -float(kv[1] @ q))
    out, seen = [], set()
    for key, v in ranked:
        score = float(v @ q)
        if min_score is not None and score < min_score:
            break
        if one_per_group and key[0] in seen:
            continue
        seen.add(key[0])
        out.append(key)
        if len(out) == k:
            break
    return out


def test_random_churn_with_compaction_matches_naive_model():
    rng = np.random.default_rng(1)
    db = Database("t", DIM)
    model: dict[tuple[str, int], np.ndarray] = {}
    sets = 0
    for step in range(30_000):  # enough deletes/overwrites to compact several times
        key = (f"g{rng.integers(0, 300)}", int(rng.integers(0, 8)))
        if model and rng.random() < 0.3:
            key = list(model)[rng.integers(0, len(model))]
            db.delete(*key)
            del model[key]
        else:
            v = unit(rng)
            db.set(key[0], key[1], v)
            model[key] = v
            sets += 1
        if step % 5000 == 4999:
            q = unit(rng)
            for kwargs in ({}, {"one_per_group": True}, {"min_score": 0.5}):
                hits, searched = db.search(q, 20, **kwargs)
                assert searched == len(model)
                assert [(h.group_id, h.intra_id) for h in hits] == naive_search(model, q, 20, **kwargs)
    assert db._count < sets - 4096  # compaction ran: dead rows were reclaimed
    assert db.size == len(model)
    assert db.group_count == len({g for g, _ in model})
    for key, v in list(model.items())[:50]:
        np.testing.assert_array_equal(db.get(*key).vector, v)


def test_one_per_group_finds_groups_beyond_the_first_candidate_pool():
    rng = np.random.default_rng(2)
    db = Database("t", DIM)
    q = unit(rng)
    for i in range(500):  # one dominant group crowds the top of the ranking
        db.set("crowd", i, (q + 0.01 * unit(rng)) / np.linalg.norm(q + 0.01 * unit(rng)))
    for g in range(5):
        db.set(f"other{g}", 0, unit(rng))
    hits, _ = db.search(q, 6, one_per_group=True)
    assert [h.group_id for h in hits][0] == "crowd"
    assert sorted(h.group_id for h in hits[1:]) == [f"other{g}" for g in range(5)]


def test_next_intra_id_and_clear():
    db = Database("t", DIM)
    v = np.eye(DIM, dtype=np.float32)[0]
    assert db.set("g", None, v)[0] == ("g", 0)
    assert db.set("g", 7, v)[0] == ("g", 7)
    assert db.set("g", None, v)[0] == ("g", 8)
    db.delete("g", 8)
    assert db.set("g", None, v)[0] == ("g", 8)
    assert db.clear() == 3 and db.size == 0 and db.search(v, 5) == ([], 0)
    with pytest.raises(LookalikeError):
        db.delete("g", 0)


def test_searches_during_writes_never_return_deleted_keys():
    rng = np.random.default_rng(3)
    db = Database("t", DIM)
    q = unit(rng)
    for i in range(2000):
        db.set("keep", i, unit(rng))
    stop = threading.Event()
    deleted: set[int] = set()
    errors: list[str] = []

    def writer() -> None:
        for i in range(2000):
            db.delete("keep", i)
            deleted.add(i)
            db.set("new", i, unit(rng))
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    while not stop.is_set():
        snapshot = set(deleted)  # deleted before this search started
        hits, _ = db.search(q, 50)
        stale = [h.intra_id for h in hits if h.group_id == "keep" and h.intra_id in snapshot]
        if stale:
            errors.append(f"stale hits {stale}")
    t.join()
    assert not errors
    assert {h.group_id for h in db.search(q, 100)[0]} == {"new"}
