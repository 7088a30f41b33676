"""Acknowledged writes survive a restart; snapshots, exports and imports are checked, damage is named.

Real servers on a real data directory, driven over loopback gRPC with the default model.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from durability_helpers import naive_top, start, state, unit_vectors
from lookalike.client import ClientError, LookalikeClient
from photos import encode, photo

pytestmark = pytest.mark.slow


def populate(c: LookalikeClient) -> None:
    c.create_database("shop")
    c.create_database("gone")
    vecs = unit_vectors(300, seed=1)
    for i in range(100):
        c.set_image("shop", f"g{i % 7}", vector=vecs[i].tolist())
    c.bulk_set("shop", [(f"b{i % 5}", None, vecs[100 + i].tolist(), f"ref{i}") for i in range(150)])
    c.set_image("shop", "photo", image=encode(photo("chelsea")))
    c.set_image("shop", "g1", intra_id=0, vector=vecs[299].tolist())  # an upsert
    c.delete_image("shop", "g2", 0)
    c.delete_group("shop", "b3")
    c.delete_database("gone")
    c.create_database("empty")


def read_all(c: LookalikeClient) -> dict:
    return {d.name: state(c, d.name) for d in c.list_databases()}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert sorted(a[name]) == sorted(b[name]), name
        for key, vec in a[name].items():
            np.testing.assert_array_equal(vec, b[name][key])


def test_a_restart_replays_the_log_then_loads_the_snapshot(tmp_path):
    data = tmp_path / "data"
    server = start(data)
    with LookalikeClient(server.address) as c:
        populate(c)
        before = read_all(c)
        auto = c.set_image("shop", "g3", vector=unit_vectors(1, 9)[0].tolist()).key.intra_id
        before["shop"][("g3", auto)] = state(c, "shop")[("g3", auto)]
    assert sorted(before) == ["empty", "shop"] and len(before["shop"]) == 100 + 150 - 30 + 1 - 1 + 1
    server.stop(0, snapshot=False)  # like a crash: only the log holds the data
    assert not (data / "snapshots" / "MANIFEST").exists()

    server = start(data)
    with LookalikeClient(server.address) as c:
        assert_same(before, read_all(c))
        # Automatic numbering continues where the group left off, not from a re-scan.
        assert c.set_image("shop", "g3", vector=unit_vectors(1, 10)[0].tolist()).key.intra_id == auto + 1
        c.delete_image("shop", "g3", auto + 1)
        snap = c.snapshot_database("shop")
        assert snap.image_count == len(before["shop"]) and snap.size_bytes > len(before["shop"]) * 1280 * 4
    server.stop(0)  # graceful: a final snapshot, the log trimmed
    wal_bytes = sum(p.stat().st_size for p in (data / "wal").glob("wal-*.log"))
    assert wal_bytes == 0

    server = start(data)
    with LookalikeClient(server.address) as c:
        after = read_all(c)
        assert_same(before, after)
        q = unit_vectors(1, 5)[0]
        hits = c.search("shop", vector=q.tolist(), top_k=10).hits
        assert [(h.key.group_id, h.key.intra_id) for h in hits] == naive_top(after["shop"], q, 10)
    server.stop(0)


def test_export_then_import_gives_an_identical_database_and_damage_is_named(tmp_path):
    server = start(tmp_path / "data", export_root=tmp_path)
    try:
        with LookalikeClient(server.address) as c:
            populate(c)
            out = tmp_path / "export"
            r = c.export_database("shop", str(out))
            assert r.image_count == len(state(c, "shop")) and r.size_bytes > 0
            c.import_database("copy", str(out))
            original, copy = state(c, "shop"), state(c, "copy")
            assert_same({"x": original}, {"x": copy})
            assert c.get_database("copy").group_count == c.get_database("shop").group_count
            with pytest.raises(ClientError) as err:
                c.import_database("copy", str(out))
            assert err.value.reason == "DATABASE_EXISTS"
            vec_file = sorted((out / "data").glob("vec-*"))[0]
            raw = bytearray(vec_file.read_bytes())
            raw[1000] ^= 0x01
            vec_file.write_bytes(bytes(raw))
            with pytest.raises(ClientError) as err:
                c.import_database("broken", str(out))
            assert err.value.reason == "EXPORT_CORRUPT" and vec_file.name in str(err.value)
            with pytest.raises(ClientError) as err:
                c.import_database("nothing", str(tmp_path / "nowhere"))
            assert err.value.reason == "EXPORT_NOT_FOUND"
            assert [d.name for d in c.list_databases()] == ["copy", "empty", "shop"]
    finally:
        server.stop(0)


def test_a_damaged_snapshot_stops_start_up_and_repair_drops_it(tmp_path, caplog):
    from lookalike.server.storage.segments import CorruptionError

    data = tmp_path / "data"
    server = start(data)
    with LookalikeClient(server.address) as c:
        populate(c)
        kept = state(c, "shop")
    server.stop(0)
    assert len(kept) == 100 + 150 - 30 + 1 - 1  # the snapshot about to be damaged holds data
    vec_file = sorted((data / "snapshots" / "dbs").glob("shop-*/vec-*"))[0]
    raw = bytearray(vec_file.read_bytes())
    raw[5 * (4 << 20) // 4 if len(raw) > (5 << 20) else 4096] ^= 0x10
    vec_file.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError) as err:
        start(data)
    assert str(vec_file) in str(err.value) and "byte offset 0" in str(err.value)
    caplog.set_level(logging.ERROR)
    server = start(data, repair=True)
    try:
        said = [r.getMessage() for r in caplog.records if "repair: dropped database 'shop'" in r.getMessage()]
        assert len(said) == 1 and str(vec_file) in said[0], caplog.text  # which database, and which file
        with LookalikeClient(server.address) as c:
            assert [d.name for d in c.list_databases()] == ["empty"]
            # none of the damaged copy is served: not its description, its images, nor search results from it
            calls = (
                lambda: c.get_database("shop"),
                lambda: c.get_image("shop", "photo", 0, include_vector=True),
                lambda: c.search("shop", vector=kept[("photo", 0)].tolist(), top_k=5),
            )
            for call in calls:
                with pytest.raises(ClientError) as err:
                    call()
                assert err.value.reason == "DATABASE_NOT_FOUND"
            c.create_database("shop")  # the name is free again, and nothing of the damaged copy comes back in it
            assert c.get_database("shop").image_count == 0 and c.list_images("shop") == []
    finally:
        server.stop(0, snapshot=False)


def test_a_server_with_another_model_refuses_the_database(tmp_path):
    import torch

    from lookalike.modelfile import EmbedderMeta, save_embedder

    data = tmp_path / "data"
    server = start(data)
    with LookalikeClient(server.address) as c:
        c.create_database("shop")
        c.set_image("shop", "a", vector=unit_vectors(1, 3)[0].tolist())
    server.stop(0)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, 1280)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.mean(dim=(2, 3)))

    other = save_embedder(torch.jit.script(Tiny().eval()), tmp_path / "other.pt",
                          EmbedderMeta(model_name="tiny-other", output_dim=1280))  # fmt: skip
    server = start(data, model=other)
    try:
        with LookalikeClient(server.address) as c:
            with pytest.raises(ClientError) as err:
                c.search("shop", vector=unit_vectors(1, 3)[0].tolist())
            assert err.value.code == "FAILED_PRECONDITION" and err.value.reason == "MODEL_MISMATCH"
            assert "tiny-other" in str(err.value) and "efficientnet" in str(err.value).lower()
            with pytest.raises(ClientError) as err:
                c.set_image("shop", "b", vector=unit_vectors(1, 4)[0].tolist())
            assert err.value.reason == "MODEL_MISMATCH"
            assert c.get_database("shop").image_count == 1  # still listed, still intact
    finally:
        server.stop(0)
    server = start(data)  # back on the right model: served again
    try:
        with LookalikeClient(server.address) as c:
            assert c.search("shop", vector=unit_vectors(1, 3)[0].tolist()).hits[0].score == pytest.approx(1.0)
    finally:
        server.stop(0)


def test_a_snapshot_compacts_retired_rows_and_the_restart_matches(tmp_path):
    data = tmp_path / "data"
    server = start(data)
    vecs = unit_vectors(6200, 31)
    with LookalikeClient(server.address) as c:
        c.create_database("churn")
        for r in range(31):  # 200 keys upserted 31 times: 6000 retired rows
            c.bulk_set("churn", [(f"k{i % 20}", i, vecs[r * 200 + i].tolist(), "") for i in range(200)])
        before = state(c, "churn")
        snap = c.snapshot_database("churn")
        assert snap.image_count == 200 and snap.size_bytes < 400 * 1280 * 4  # 200 live rows written, not 6200
        c.set_image("churn", "after", vector=vecs[0].tolist())  # logged after the compacting snapshot
        before[("after", 0)] = state(c, "churn")[("after", 0)]
    server.stop(0, snapshot=False)
    server = start(data)
    try:
        with LookalikeClient(server.address) as c:
            after = state(c, "churn")
            assert_same({"x": before}, {"x": after})
            q = unit_vectors(1, 2)[0]
            hits = c.search("churn", vector=q.tolist(), top_k=10).hits
            assert [(h.key.group_id, h.key.intra_id) for h in hits] == naive_top(after, q, 10)
    finally:
        server.stop(0)


def test_the_same_weights_with_another_preprocessing_refuse_the_database_and_say_why(tmp_path):
    import dataclasses

    from lookalike.server.core.embedding.default_model import default_model_path

    from lookalike.modelfile import load_embedder, save_embedder

    data = tmp_path / "data"
    server = start(data)
    with LookalikeClient(server.address) as c:
        c.create_database("shop")
        c.set_image("shop", "a", vector=unit_vectors(1, 3)[0].tolist())
    server.stop(0)
    module, meta = load_embedder(default_model_path())
    other = "shorter_then_center_crop" if meta.resize_mode != "shorter_then_center_crop" else "stretch"
    cropped = save_embedder(module, tmp_path / "cropped.pt", dataclasses.replace(meta, resize_mode=other))
    server = start(data, model=cropped)
    try:
        with LookalikeClient(server.address) as c:
            with pytest.raises(ClientError) as err:
                c.search("shop", vector=unit_vectors(1, 3)[0].tolist())
            assert err.value.reason == "MODEL_MISMATCH" and "resize_mode" in err.value.message
            assert "--model" in err.value.message and "re-embed" in err.value.message
    finally:
        server.stop(0)
