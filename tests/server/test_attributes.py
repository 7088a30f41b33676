"""Attributes travel with images (set, get, list, hits), filter searches inside the scan, and persist."""

from __future__ import annotations

import numpy as np
import pytest
from durability_helpers import start, unit_vectors
from lookalike.client import ClientError, LookalikeClient


@pytest.mark.slow
def test_attributes_survive_restart_snapshot_and_export(tmp_path):
    server = start(tmp_path / "d")
    v = unit_vectors(3, 8)
    with LookalikeClient(server.address) as c:
        c.create_database("a")
        c.set_image("a", "g", vector=v[0].tolist(), attributes={"source": "s0"})
        c.bulk_set("a", [("g", None, v[1].tolist(), "", {"source": "s1"}), ("g", None, v[2].tolist(), "", None)])
    server.stop(0, snapshot=False)
    for snapshot in (True, False):  # replayed from the log, then loaded from a snapshot
        server = start(tmp_path / "d")
        with LookalikeClient(server.address) as c:
            assert [dict(i.attributes) for i in c.list_images("a")] == [{"source": "s0"}, {"source": "s1"}, {}]
            assert c.search("a", vector=v[1].tolist(), top_k=3, filter={"source": "s1"}).hits[0].key.intra_id == 1
            if not snapshot:
                c.export_database("a", "x")  # relative: under the export root (<data-dir>/exports)
                c.import_database("b", "x")
                assert [dict(i.attributes) for i in c.list_images("b")] == [{"source": "s0"}, {"source": "s1"}, {}]
        server.stop(0, snapshot=snapshot)


@pytest.mark.parametrize("storage", ["f16", "bf16"])
def test_half_precision_storage_keeps_the_ranking(client, db_name, storage):
    name = f"{db_name[:40]}-{storage}"
    db = client.create_database(name, storage=storage)
    assert db.storage == storage
    vecs = unit_vectors(2000, 41)
    try:
        client.bulk_set(name, [(f"g{i % 50}", i, v.tolist(), "") for i, v in enumerate(vecs)])
        client.bulk_set(db_name, [(f"g{i % 50}", i, v.tolist(), "") for i, v in enumerate(vecs)])  # the f32 twin
        recalls = []
        for q in unit_vectors(20, 42):
            half = [(h.key.group_id, h.key.intra_id) for h in client.search(name, vector=q.tolist(), top_k=10).hits]
            full = [(h.key.group_id, h.key.intra_id) for h in client.search(db_name, vector=q.tolist(), top_k=10).hits]
            recalls.append(len(set(half) & set(full)) / 10)
        assert np.mean(recalls) >= 0.99, recalls
        stored = np.asarray(client.get_image(name, "g3", 3, include_vector=True).vector.values)
        np.testing.assert_allclose(stored, vecs[3], atol=1e-2 if storage == "bf16" else 1e-3)
    finally:
        client.delete_database(name)
    with pytest.raises(ClientError) as err:
        client.create_database(name, storage="f8")
    assert err.value.reason == "STORAGE_INVALID"


@pytest.mark.slow
def test_half_precision_survives_a_restart_at_half_the_bytes(tmp_path):
    vecs = unit_vectors(3000, 43)
    sizes = {}
    for storage in ("f32", "f16"):
        data = tmp_path / storage
        server = start(data)
        with LookalikeClient(server.address) as c:
            c.create_database("s", storage=storage)
            c.bulk_set("s", [("g", i, v.tolist(), "") for i, v in enumerate(vecs)])
            sizes[storage] = c.snapshot_database("s").size_bytes
            before = [(h.key.intra_id, h.score) for h in c.search("s", vector=vecs[7].tolist(), top_k=5).hits]
        server.stop(0, snapshot=False)
        server = start(data)
        with LookalikeClient(server.address) as c:
            assert c.get_database("s").storage == storage
            assert [(h.key.intra_id, h.score) for h in c.search("s", vector=vecs[7].tolist(), top_k=5).hits] == before
        server.stop(0)
    assert sizes["f16"] < 0.6 * sizes["f32"]
