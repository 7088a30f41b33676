"""Database and image lifecycle over gRPC: ids, upsert, delete, groups, paging, bulk."""

from __future__ import annotations

import numpy as np
import pytest
from photos import encode

DIM = 1280


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


def keys(hits) -> list[tuple[str, int]]:
    return [(h.key.group_id, h.key.intra_id) for h in hits]


def test_database_crud_and_counts(client, db_name):
    d = client.get_database(db_name)
    assert (d.name, d.dimension, d.metric, d.image_count) == (db_name, DIM, "cosine", 0)
    assert db_name in [x.name for x in client.list_databases()]
    client.set_image(db_name, "g1", vector=unit(1))
    client.set_image(db_name, "g2", vector=unit(2))
    d = client.get_database(db_name)
    assert (d.image_count, d.group_count) == (2, 2)
    client.delete_database(db_name)
    assert db_name not in [x.name for x in client.list_databases()]


def test_list_databases_pages(client):
    names = [f"page-{i:02d}" for i in range(7)]
    for n in names:
        client.create_database(n)
    try:
        listed = [d.name for d in client.list_databases(page_size=2)]
        assert [n for n in listed if n.startswith("page-")] == names
    finally:
        for n in names:
            client.delete_database(n)


def test_intra_ids_are_assigned_in_sequence_per_group(client, db_name):
    got = [client.set_image(db_name, g, vector=unit(i)).key for i, g in enumerate(["a", "a", "b", "a"])]
    assert [(k.group_id, k.intra_id) for k in got] == [("a", 0), ("a", 1), ("b", 0), ("a", 2)]
    k = client.set_image(db_name, "a", vector=unit(9), intra_id=10).key
    assert k.intra_id == 10
    assert client.set_image(db_name, "a", vector=unit(10)).key.intra_id == 11


def test_upsert_replaces_and_never_leaves_stale_hits(client, db_name):
    old, new = unit(1), unit(2)
    assert client.set_image(db_name, "p", vector=old, intra_id=0).replaced is False
    assert client.set_image(db_name, "p", vector=new, intra_id=0).replaced is True
    assert client.get_database(db_name).image_count == 1
    hits = client.search(db_name, vector=old, top_k=10).hits
    assert keys(hits) == [("p", 0)]
    assert hits[0].score == pytest.approx(float(np.dot(old, new)), abs=1e-5)  # the new vector, not the old
    stored = client.get_image(db_name, "p", 0, include_vector=True).vector.values
    np.testing.assert_allclose(stored, new, atol=1e-6)


def test_delete_image_and_group(client, db_name):
    for i in range(3):
        client.set_image(db_name, "x", vector=unit(i))
    client.set_image(db_name, "y", vector=unit(10))
    client.delete_image(db_name, "x", 1)
    assert ("x", 1) not in keys(client.search(db_name, vector=unit(1), top_k=10).hits)
    assert client.delete_group(db_name, "x") == 2
    assert keys(client.search(db_name, vector=unit(0), top_k=10).hits) == [("y", 0)]
    assert [(i.key.group_id, i.key.intra_id) for i in client.list_images(db_name)] == [("y", 0)]


def test_many_deletes_and_reinserts_match_a_naive_model(client, db_name):
    """Random set/delete traffic (enough to trigger compaction) agrees with a dict + numpy search."""
    rng = np.random.default_rng(0)
    model: dict[tuple[str, int], list[float]] = {}
    for step in range(400):
        key = (f"g{rng.integers(0, 20)}", int(rng.integers(0, 5)))
        if model and rng.random() < 0.35:
            key = list(model)[rng.integers(0, len(model))]
            client.delete_image(db_name, *key)
            del model[key]
        else:
            v = unit(1000 + step)
            client.set_image(db_name, key[0], vector=v, intra_id=key[1])
            model[key] = v
    q = unit(5)
    ref = sorted(model, key=lambda k: -float(np.dot(model[k], q)))[:10]
    got = client.search(db_name, vector=q, top_k=10).hits
    assert keys(got) == ref
    assert client.get_database(db_name).image_count == len(model)


def test_list_images_pages_in_key_order(client, db_name):
    for g in ("b", "a", "c"):
        for _ in range(3):
            client.set_image(db_name, g, vector=unit(hash(g) % 100))
    listed = [(i.key.group_id, i.key.intra_id) for i in client.list_images(db_name, page_size=2)]
    assert listed == [(g, i) for g in "abc" for i in range(3)]
    only_b = [(i.key.group_id, i.key.intra_id) for i in client.list_images(db_name, group_id="b", page_size=2)]
    assert only_b == [("b", 0), ("b", 1), ("b", 2)]


def test_bulk_set_continues_past_bad_items(client, db_name, photos):
    good = encode(photos["coffee"])
    items = [
        ("g", None, good, "ok-1"),
        ("g", None, b"not an image", "garbage"),
        ("g", None, good[: len(good) // 2], "truncated"),
        ("", None, good, "no-group"),
        ("h", 3, good, "ok-2"),
        ("g", None, b"", "empty"),
    ]
    s = client.bulk_set(db_name, items)
    assert (s.received_count, s.succeeded_count, s.failed_count) == (6, 2, 4)
    assert [(f.index, f.client_ref, f.reason) for f in s.failures] == [
        (1, "garbage", "IMAGE_UNDECODABLE"),
        (2, "truncated", "IMAGE_UNDECODABLE"),
        (3, "no-group", "GROUP_ID_INVALID"),
        (5, "empty", "IMAGE_MISSING"),
    ]
    assert [(k.group_id, k.intra_id) for k in s.keys] == [("g", 0), ("h", 3)]
    assert client.get_database(db_name).image_count == 2
