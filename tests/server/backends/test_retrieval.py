"""Registering real photos in groups and finding them again with edited queries."""

from __future__ import annotations

import numpy as np
import pytest
from photos import crop, encode, resize

GROUPS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field")


@pytest.fixture
def catalogue(client, db_name, photos):
    """Each group holds two views of its photo (intra 0: full, intra 1: a crop)."""
    for name in GROUPS:
        client.set_image(db_name, name, image=encode(photos[name]))
        client.set_image(db_name, name, image=encode(crop(photos[name], 0.8, 0.05)))
    return db_name


@pytest.mark.parametrize(
    "edit",
    [
        lambda a: crop(a, 0.6, 0.2),
        lambda a: resize(a, 0.3),
        lambda a: np.ascontiguousarray(a[:, ::-1]),  # mirrored
    ],
    ids=["crop", "downscale", "mirror"],
)
def test_edited_query_finds_its_group_first(client, catalogue, photos, edit):
    for name in GROUPS:
        r = client.search(catalogue, image=encode(edit(photos[name]), quality=60), top_k=3)
        assert r.hits[0].key.group_id == name, (name, [(h.key.group_id, h.score) for h in r.hits])
        assert r.searched_count == 2 * len(GROUPS)


def test_top_k_bounds_and_order(client, catalogue, photos):
    q = encode(photos["coffee"])
    for k in (1, 5, 12, 50):
        hits = client.search(catalogue, image=q, top_k=k).hits
        assert len(hits) == min(k, 2 * len(GROUPS))
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
    assert len(client.search(catalogue, image=q).hits) == 10  # 0 means 10


def test_one_per_group_returns_distinct_groups(client, catalogue, photos):
    hits = client.search(catalogue, image=encode(photos["chelsea"]), top_k=4, one_per_group=True).hits
    groups = [h.key.group_id for h in hits]
    assert len(groups) == 4 and len(set(groups)) == 4 and groups[0] == "chelsea"
    all_groups = client.search(catalogue, image=encode(photos["chelsea"]), top_k=100, one_per_group=True).hits
    assert sorted(h.key.group_id for h in all_groups) == sorted(GROUPS)


def test_min_score_drops_weak_hits(client, catalogue, photos):
    hits = client.search(catalogue, image=encode(photos["rocket"]), top_k=12, min_score=0.6).hits
    assert hits and all(h.score >= 0.6 for h in hits)
    assert {h.key.group_id for h in hits} == {"rocket"}


def test_search_by_registered_image_excludes_itself(client, catalogue):
    hits = client.search(catalogue, registered=("camera", 0), top_k=3).hits
    assert ("camera", 0) not in [(h.key.group_id, h.key.intra_id) for h in hits]
    assert (hits[0].key.group_id, hits[0].key.intra_id) == ("camera", 1)


def test_search_by_vector_equals_search_by_image(client, catalogue, photos):
    q = encode(photos["astronaut"])
    vec = list(client.embed([q]).embeddings[0].values)
    by_image = client.search(catalogue, image=q, top_k=5).hits
    by_vector = client.search(catalogue, vector=vec, top_k=5).hits
    assert [(h.key.group_id, h.key.intra_id) for h in by_image] == [(h.key.group_id, h.key.intra_id) for h in by_vector]
    np.testing.assert_allclose([h.score for h in by_image], [h.score for h in by_vector], atol=1e-5)
