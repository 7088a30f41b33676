"""The duplicate check of a write (if_duplicate SKIP / REJECT) and min_tier, through a real server."""

from __future__ import annotations

import threading

import numpy as np
import pytest

DIM = 1280


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def stocked(client: object, db_name: str) -> tuple[str, np.ndarray]:
    from lookalike.client import BulkItem

    x = unit(np.random.default_rng(11).standard_normal((50, DIM)))
    assert client.bulk_set(db_name, [BulkItem(f"g{i}", vector=v.tolist()) for i, v in enumerate(x)]).failed_count == 0
    return db_name, x


def near(v: np.ndarray, noise: float, seed: int) -> list[float]:
    return unit(v + noise * unit(np.random.default_rng(seed).standard_normal(DIM))).tolist()


def count(client: object, db: str) -> int:
    return int(client.get_database(db).image_count)  # type: ignore[attr-defined]


def test_skip_answers_with_the_stored_key_and_stores_nothing(client: object, stocked: tuple[str, np.ndarray]) -> None:
    db, x = stocked
    r = client.set_image(db, "new", vector=near(x[7], 0.01, 1), if_duplicate="SKIP", duplicate_threshold=0.95)
    assert r.skipped_duplicate and (r.key.group_id, r.key.intra_id) == ("g7", 0) and r.duplicate_score > 0.95
    assert count(client, db) == 50
    r = client.set_image(db, "new", vector=near(x[7], 1.0, 2), if_duplicate="SKIP", duplicate_threshold=0.95)
    assert not r.skipped_duplicate and r.key.group_id == "new"  # not a duplicate: stored
    assert count(client, db) == 51


def test_reject_names_the_stored_image(client: object, stocked: tuple[str, np.ndarray]) -> None:
    from lookalike.client import ClientError

    db, x = stocked
    with pytest.raises(ClientError) as err:
        client.set_image(db, "new", vector=near(x[3], 0.01, 3), if_duplicate="REJECT", duplicate_threshold=0.95)
    assert (err.value.code, err.value.reason) == ("ALREADY_EXISTS", "DUPLICATE_IMAGE")
    assert err.value.metadata["group_id"] == "g3" and err.value.metadata["intra_id"] == "0"
    assert count(client, db) == 50


def test_an_upsert_of_its_own_key_is_not_a_duplicate_of_itself(client: object, stocked: tuple[str, np.ndarray]) -> None:
    db, x = stocked
    r = client.set_image(db, "g4", intra_id=0, vector=near(x[4], 0.01, 4), if_duplicate="REJECT",
                         duplicate_threshold=0.95)  # fmt: skip
    assert r.replaced and not r.skipped_duplicate


def test_a_stream_skips_an_item_that_duplicates_an_earlier_one_of_the_stream(
    client: object, stocked: tuple[str, np.ndarray]
) -> None:
    from lookalike.client import BulkItem, duplicate_check

    db, x = stocked
    fresh = unit(np.random.default_rng(12).standard_normal(DIM))
    check = duplicate_check("SKIP", threshold=0.95)
    items = [
        BulkItem("a", vector=fresh.tolist(), client_ref="first", duplicates=check),
        BulkItem("b", vector=near(fresh, 0.01, 5), client_ref="copy of first", duplicates=check),
        BulkItem("c", vector=near(x[9], 0.01, 6), client_ref="copy of g9", duplicates=check),
        BulkItem("d", vector=near(x[9], 0.01, 7), client_ref="unchecked"),
    ]
    r = client.bulk_set(db, items)
    assert r.succeeded_count == 4 and r.skipped_duplicate_count == 2
    skipped = {s.client_ref: (s.existing.group_id, s.existing.intra_id) for s in r.skipped_duplicates}
    assert skipped == {"copy of first": ("a", 0), "copy of g9": ("g9", 0)}
    assert [(k.group_id, k.intra_id) for k in r.keys] == [("a", 0), ("a", 0), ("g9", 0), ("d", 0)]
    assert count(client, db) == 52  # a and d


def test_concurrent_writers_of_one_image_store_it_once(client: object, db_name: str) -> None:
    v = unit(np.random.default_rng(13).standard_normal(DIM)).tolist()
    results: list[object] = []

    def write(i: int) -> None:
        results.append(client.set_image(db_name, f"w{i}", vector=v, if_duplicate="SKIP", duplicate_threshold=0.99))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = [r for r in results if not r.skipped_duplicate]  # type: ignore[attr-defined]
    assert len(stored) == 1 and count(client, db_name) == 1
    key = (stored[0].key.group_id, stored[0].key.intra_id)  # type: ignore[attr-defined]
    assert all((r.key.group_id, r.key.intra_id) == key for r in results)  # type: ignore[attr-defined]


def test_bad_checks_are_refused(client: object, stocked: tuple[str, np.ndarray]) -> None:
    from lookalike.client import ClientError

    db, x = stocked
    for kwargs, reason in [({"duplicate_threshold": 2.0}, "THRESHOLD_INVALID"), ({"duplicate_tier": "twin"},
                                                                                  "TIER_INVALID")]:  # fmt: skip
        with pytest.raises(ClientError) as err:
            client.set_image(db, "z", vector=x[0].tolist(), if_duplicate="SKIP", **kwargs)
        assert err.value.reason == reason
    assert count(client, db) == 50


def test_min_tier_and_models_use_the_calibrated_tiers(client: object, stocked: tuple[str, np.ndarray]) -> None:
    from lookalike.client import ClientError

    db, x = stocked
    (model,) = client.list_models()
    assert model.is_default and db in list(model.databases) and model.dimension == DIM
    if not model.HasField("tiers"):
        with pytest.raises(ClientError) as err:
            client.search(db, vector=x[0].tolist(), min_tier="duplicate")
        assert err.value.reason == "TIERS_UNKNOWN"
        return
    t = model.tiers
    assert t.duplicate > t.near > t.similar
    hits = client.search(db, vector=near(x[2], 0.01, 8), top_k=10, min_tier="duplicate").hits
    assert [h.key.group_id for h in hits] == ["g2"]  # the unrelated ones score ~0, below every tier
    assert all(h.score >= t.duplicate for h in hits)
