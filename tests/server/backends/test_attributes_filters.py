"""Attributes travel with images (set, get, list, hits) and filter searches, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXACT, unit_vectors
from lookalike.client import ClientError


def naive(vectors: dict, attrs: dict, q: np.ndarray, k: int, where: dict, prefix: str = "", per_group=False):
    keys = [key for key in sorted(vectors) if all(attrs[key].get(a) == b for a, b in where.items())
            and key[0].startswith(prefix)]  # fmt: skip
    scores = {key: float(vectors[key].astype(np.float64) @ q) for key in keys}
    ranked = sorted(keys, key=lambda key: (-scores[key], key))
    if per_group:
        seen, out = set(), []
        for key in ranked:
            if key[0] not in seen:
                seen.add(key[0])
                out.append(key)
        ranked = out
    return ranked[:k]


def test_filtered_search_equals_filtering_a_brute_force_result(client, db_name):
    vecs = unit_vectors(400, 21)
    cats = ["shoes", "bags", "hats"]
    items, vectors, attrs = [], {}, {}
    for i in range(400):
        group = f"{'sku' if i % 2 else 'ref'}-{i % 37}"
        a = {"category": cats[i % 3], "source": f"/data/{i}.jpg"}
        items.append((group, i, vecs[i].tolist(), "", a))
        vectors[(group, i)] = vecs[i]
        attrs[(group, i)] = a
    assert client.bulk_set(db_name, items).succeeded_count == 400
    q = unit_vectors(1, 5)[0]
    for where, prefix, per_group in [({"category": "bags"}, "", False), ({"category": "hats"}, "sku", False),
                                     ({}, "ref", True), ({"category": "shoes"}, "", True),
                                     ({"category": "none"}, "", False)]:  # fmt: skip
        resp = client.search(db_name, vector=q.tolist(), top_k=15, filter=where, group_id_prefix=prefix,
                             one_per_group=per_group)  # fmt: skip
        got = [(h.key.group_id, h.key.intra_id) for h in resp.hits]
        assert got == naive(vectors, attrs, q, 15, where, prefix, per_group), (where, prefix)
        assert resp.searched_count == len(naive(vectors, attrs, q, 10_000, where, prefix)) and resp.index in EXACT
        for h in resp.hits:
            assert dict(h.attributes) == attrs[(h.key.group_id, h.key.intra_id)]
    lean = client.search(db_name, vector=q.tolist(), top_k=3, omit_attributes=True)
    assert all(not h.attributes for h in lean.hits)


def test_attributes_are_returned_replaced_and_validated(client, db_name):
    v = unit_vectors(2, 3)
    client.set_image(db_name, "p", intra_id=0, vector=v[0].tolist(), attributes={"title": "Red shoe", "url": "u1"})
    got = client.get_image(db_name, "p", 0)
    assert dict(got.attributes) == {"title": "Red shoe", "url": "u1"}
    assert dict(client.list_images(db_name)[0].attributes) == {"title": "Red shoe", "url": "u1"}
    client.set_image(db_name, "p", intra_id=0, vector=v[1].tolist(), attributes={"title": "Blue shoe"})
    assert dict(client.get_image(db_name, "p", 0).attributes) == {"title": "Blue shoe"}  # an upsert replaces them
    hit = client.search(db_name, vector=v[1].tolist(), top_k=1, filter={"title": "Blue shoe"}).hits[0]
    assert dict(hit.attributes) == {"title": "Blue shoe"}
    assert client.search(db_name, vector=v[1].tolist(), top_k=1, filter={"title": "Red shoe"}).hits == []
    for bad in ({f"k{i}": "v" for i in range(40)}, {"": "v"}, {"k": "x" * 2000}, {"a\nb": "v"}):
        with pytest.raises(ClientError) as err:
            client.set_image(db_name, "p", vector=v[0].tolist(), attributes=bad)
        assert err.value.reason == "ATTRIBUTES_INVALID"
    assert client.get_database(db_name).image_count == 1
