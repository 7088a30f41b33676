"""An OSS root: snapshots and the shipped log restore a fresh machine; outages lose nothing.

Real oss2 against a real S3-protocol server (moto) on loopback, path-style.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid

import numpy as np
import pytest
from durability_helpers import start, state, unit_vectors
from lookalike.client import ClientError, LookalikeClient
from moto_s3 import S3

pytestmark = pytest.mark.slow
KEY_ID = "AKIDlookalikeTESTkey"
SECRET = "s3cr3t-Lookalike-never-printed-0xC0FFEE"


@pytest.fixture
def s3(monkeypatch):
    s = S3("bkt", KEY_ID, SECRET)
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", SECRET)
    s.root = f"oss://bkt/{uuid.uuid4().hex}/"  # moto keeps buckets across servers of one process
    yield s
    s.server.stop()


def oss_config(s3, **extra):
    return {"root": s3.root, "oss_endpoint": s3.endpoint, "oss_path_style": True, "oss_access_key_id": KEY_ID,
            "oss_access_key_secret": SECRET, "ship_interval_s": 0.2, **extra}  # fmt: skip


def restore_keys(data, s3, model) -> set:
    """What a fresh machine would restore from the root, without writing to the root."""
    from lookalike.server.core.backends.builtin.catalog import Catalog
    from lookalike.server.core.backends.builtin.persistence import Persistence

    from lookalike.oss import OssClient, OssCredentials

    p = Persistence(data, root=s3.root, oss=OssClient(s3.endpoint, OssCredentials(KEY_ID, SECRET), path_style=True))
    catalog = Catalog(1280, model, p)
    catalog.recover()
    entries, _ = catalog.get("shop").list(group_id=None, after=None, limit=10**6)
    p.close()
    return {(e.group_id, e.intra_id) for e in entries}


def wait_shipped(server, timeout=20.0):
    p = server.service.catalog.persistence
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.mirror.shipped >= p.wal.last_seq:
            return
        time.sleep(0.05)
    raise AssertionError(f"log not shipped: {p.mirror.shipped} < {p.wal.last_seq} ({p.ship_error})")


def test_a_fresh_machine_restores_every_database_from_the_oss_root(tmp_path, s3, caplog):
    caplog.set_level(logging.DEBUG)
    a = start(tmp_path / "a", **oss_config(s3))
    with LookalikeClient(a.address) as c:
        c.create_database("shop")
        c.create_database("other")
        vecs = unit_vectors(120, 1)
        c.bulk_set("shop", [(f"g{i % 9}", None, vecs[i].tolist(), "") for i in range(80)])
        c.snapshot_database("shop")  # snapshot in OSS, then more writes only in the shipped log
        c.bulk_set("shop", [(f"h{i % 4}", None, vecs[80 + i].tolist(), "") for i in range(40)])
        c.delete_group("shop", "g2")
        c.set_image("other", "x", vector=vecs[0].tolist())
        before = {d.name: state(c, d.name) for d in c.list_databases()}
        wait_shipped(a)
    a.stop(0, snapshot=False)  # the machine is lost: no final snapshot

    s3.fail_next(503, 500)  # the store is briefly overloaded as the new machine starts: retried, not fatal
    b = start(tmp_path / "b", **oss_config(s3))  # an empty disk, the same root
    assert not s3.faults and sum("OSS answered 50" in r.getMessage() for r in caplog.records) == 2
    try:
        with LookalikeClient(b.address) as c:
            after = {d.name: state(c, d.name) for d in c.list_databases()}
        assert sorted(after) == sorted(before) == ["other", "shop"]
        for name in before:
            assert sorted(after[name]) == sorted(before[name])
            for key in before[name]:
                np.testing.assert_array_equal(after[name][key], before[name][key])
    finally:
        b.stop(0)
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET.encode() not in written and KEY_ID.encode() not in written
    server_logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("botocore", "boto3")))
    assert SECRET not in server_logs and KEY_ID not in server_logs


def test_oss_outage_writes_continue_locally_and_shipping_recovers(tmp_path, s3, caplog, monkeypatch):
    from lookalike.server.storage import blobs

    a = start(tmp_path / "a", **oss_config(s3))
    vecs = unit_vectors(200, 2)
    with LookalikeClient(a.address) as c:
        c.create_database("shop")
        c.bulk_set("shop", [(f"g{i % 5}", None, vecs[i].tolist(), "") for i in range(50)])
        c.snapshot_database("shop")
        first = state(c, "shop")

        # The S3 server dies in the middle of a snapshot upload (after two objects).
        real_put, puts = blobs.OssBlobStore.put, []

        def dying_put(self, name, data):
            puts.append(name)
            if len(puts) > 2:
                s3.stop() if len(puts) == 3 else None
            return real_put(self, name, data)

        monkeypatch.setattr(blobs.OssBlobStore, "put", dying_put)
        c.bulk_set("shop", [(f"h{i % 5}", None, vecs[50 + i].tolist(), "") for i in range(100)])
        with pytest.raises(ClientError) as err:
            c.snapshot_database("shop")
        assert err.value.code == "UNAVAILABLE" and err.value.reason == "OSS_UNAVAILABLE"
        monkeypatch.setattr(blobs.OssBlobStore, "put", real_put)
        # Writes keep succeeding locally while OSS is down; shipping says it cannot reach OSS.
        c.bulk_set("shop", [(f"k{i % 5}", None, vecs[150 + i].tolist(), "") for i in range(50)])
        assert c.get_database("shop").image_count == 200
        persistence = a.service.catalog.persistence
        assert persistence.ship() is False and "unreachable" in (persistence.ship_error or "")

        # Meanwhile a fresh machine restoring from the root (read-only here) gets the previous snapshot.
        s3.restart()
        restored = restore_keys(tmp_path / "probe", s3, a.service.model)
        assert set(first) <= restored  # the old snapshot (and whatever log reached OSS) loads

        # OSS is back: the next snapshot succeeds and the shipper catches up.
        c.snapshot_database("shop")
        wait_shipped(a)
        final = state(c, "shop")
    a.stop(0, snapshot=False)
    assert persistence.ship_error is None  # shipping recovered once OSS was back
    b = start(tmp_path / "b", **oss_config(s3))
    try:
        with LookalikeClient(b.address) as c:
            assert sorted(state(c, "shop")) == sorted(final) and len(final) == 200
    finally:
        b.stop(0)
    assert SECRET not in "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("boto"))


def test_fsync_always_on_an_oss_root_means_the_record_is_in_oss(tmp_path, s3):
    a = start(tmp_path / "a", **oss_config(s3, fsync="always", ship_interval_s=3600.0))
    with LookalikeClient(a.address) as c:
        c.create_database("shop")
        c.set_image("shop", "g", vector=unit_vectors(1, 3)[0].tolist())
    b = start(tmp_path / "b", **oss_config(s3, ship_interval_s=3600.0))  # right after the OK, nothing waited for
    try:
        with LookalikeClient(b.address) as c:
            assert c.get_database("shop").image_count == 1
    finally:
        b.stop(0, snapshot=False)
        a.stop(0, snapshot=False)


def test_export_to_oss_and_import_from_it(tmp_path, s3):
    a = start(tmp_path / "a", **oss_config(s3))
    try:
        with LookalikeClient(a.address) as c:
            c.create_database("shop")
            c.bulk_set("shop", [(f"g{i % 3}", None, v.tolist(), "") for i, v in enumerate(unit_vectors(70, 4))])
            where = s3.root + "exports/shop/"
            assert c.export_database("shop", where).image_count == 70
            c.import_database("copy", where)
            original, copy = state(c, "shop"), state(c, "copy")
            assert sorted(original) == sorted(copy)
            for key in original:
                np.testing.assert_array_equal(original[key], copy[key])
            with pytest.raises(ClientError) as err:
                c.import_database("none", s3.root + "exports/missing/")
            assert err.value.reason == "EXPORT_NOT_FOUND"
    finally:
        a.stop(0)


def test_kept_images_are_restored_from_the_oss_root(tmp_path, s3):
    """Kept thumbnails ship with the snapshots: a fresh machine on the same root serves them."""
    from photos import encode, photo

    sent = encode(photo("coffee"))
    a = start(tmp_path / "a", **oss_config(s3))
    with LookalikeClient(a.address) as c:
        c.create_database("kept", keep="original")
        c.set_image("kept", "sku", image=sent)
        thumb, _ = c.get_image_bytes("kept", "sku", 0)
        c.snapshot_database("kept")  # uploads the blobs the snapshot references
    a.stop(0, snapshot=False)
    b = start(tmp_path / "b", **oss_config(s3))
    try:
        assert not list((tmp_path / "b" / "images").glob("??/*"))  # nothing local yet: read from OSS on demand
        with LookalikeClient(b.address) as c:
            assert c.get_image_bytes("kept", "sku", 0) == (thumb, "image/jpeg")
            assert c.get_image_bytes("kept", "sku", 0, "original")[0] == sent
        assert len(list((tmp_path / "b" / "images").glob("??/*"))) == 2  # cached locally once read
    finally:
        b.stop(0)


def test_a_kept_image_written_after_the_last_snapshot_is_in_oss_before_its_log_record(tmp_path, s3):
    """The shipped log names kept blobs: they are uploaded before it, so a restore has their bytes."""
    from photos import encode, photo

    a = start(tmp_path / "a", **oss_config(s3))
    with LookalikeClient(a.address) as c:
        c.create_database("late")
        c.snapshot_database("late")
        sent = encode(photo("rocket"))
        c.set_image("late", "sku", image=sent)  # after the snapshot: only in the shipped log
        thumb, _ = c.get_image_bytes("late", "sku", 0)
        wait_shipped(a)
    a.stop(0, snapshot=False)
    b = start(tmp_path / "b", **oss_config(s3))
    try:
        with LookalikeClient(b.address) as c:
            assert c.get_image_bytes("late", "sku", 0)[0] == thumb
    finally:
        b.stop(0)


def _kept_then_stopped(tmp_path, s3):
    """A server with six kept thumbnails in an OSS snapshot, then one written and one deleted after it; stopped."""
    from photos import PHOTO_NAMES, encode, photo

    names = list(PHOTO_NAMES[:7])
    a = start(tmp_path / "a", **oss_config(s3))
    with LookalikeClient(a.address) as c:
        c.create_database("kept", keep="thumbnail")
        for name in names[:6]:
            c.set_image("kept", name, image=encode(photo(name)))
        c.snapshot_database("kept")  # uploads the six thumbnails, then the manifest naming them
        c.set_image("kept", names[6], image=encode(photo(names[6])))  # after it: uploaded before its shipped record
        c.delete_image("kept", names[0], 0)  # released after it
        thumbs = {n: c.get_image_bytes("kept", n, 0)[0] for n in names[1:]}
        wait_shipped(a)
    a.stop(0, snapshot=False)
    return names, thumbs


def _checked(s3, thumbs) -> list[str]:
    """The kept images the server asked OSS about (HEAD), by name."""
    digest_of = {hashlib.sha256(t).hexdigest(): n for n, t in thumbs.items()}
    heads = [path for method, path in s3.requests if method == "HEAD" and "/images/" in path]
    return sorted(digest_of.get(h.rsplit("/", 1)[1], h) for h in heads)


def _served_by_a_fresh_machine(tmp_path, s3, names, thumbs):
    fresh = start(tmp_path / "fresh", **oss_config(s3))  # everything is in the root: a new machine serves it
    try:
        with LookalikeClient(fresh.address) as c:
            for n in names[1:]:
                assert c.get_image_bytes("kept", n, 0)[0] == thumbs[n]
            with pytest.raises(ClientError):
                c.get_image_bytes("kept", names[0], 0)
    finally:
        fresh.stop(0)


def test_after_a_restart_a_snapshot_asks_oss_only_about_kept_images_written_since_the_last_one(tmp_path, s3):
    """The OSS root's snapshot names every kept blob it references: after a restart, the next snapshot does not
    HEAD each of them again (10M requests at 10M images), only those the log touched after it."""
    names, thumbs = _kept_then_stopped(tmp_path, s3)
    s3.requests.clear()
    b = start(tmp_path / "a", **oss_config(s3))
    try:
        with LookalikeClient(b.address) as c:
            c.snapshot_database("kept")
        wait_shipped(b)
        # Known from the OSS snapshot: coffee, astronaut, rocket, camera. Checked once each: the one written
        # after it (hubble_deep_field: there, uploaded before its record shipped) and cat, whose thumbnail is
        # chelsea's (scikit-image's cat is chelsea): the delete after the snapshot released that blob once.
        assert _checked(s3, thumbs) == ["cat", "hubble_deep_field"]
        assert not [p for m, p in s3.requests if m == "PUT" and "/images/" in p]  # nothing uploaded twice
    finally:
        b.stop(0, snapshot=False)
    _served_by_a_fresh_machine(tmp_path, s3, names, thumbs)


def test_oss_down_at_the_restart_still_spares_the_checks_once_it_is_back(tmp_path, s3):
    """OSS unreachable when the restarted server first pushes: the question waits for the next push."""
    names, thumbs = _kept_then_stopped(tmp_path, s3)
    s3.stop()
    b = start(tmp_path / "a", **oss_config(s3))
    try:
        with LookalikeClient(b.address) as c, pytest.raises(ClientError) as err:
            c.snapshot_database("kept")  # durable here, not uploaded
        assert err.value.reason == "OSS_UNAVAILABLE"
        s3.restart()
        s3.requests.clear()
        with LookalikeClient(b.address) as c:
            c.snapshot_database("kept")
        wait_shipped(b)
        assert _checked(s3, thumbs) == ["cat", "hubble_deep_field"]
    finally:
        b.stop(0, snapshot=False)
    _served_by_a_fresh_machine(tmp_path, s3, names, thumbs)
