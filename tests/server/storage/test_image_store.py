"""The image store: content addressing, durability modes, holds against removal, sweeps, the OSS mirror."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from lookalike.server.storage.blobs import LocalBlobStore
from lookalike.server.storage.image_store import ImageStore, digest_of


@pytest.fixture(params=["dir", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images" if request.param == "dir" else None)


def test_content_addressed_put_get(store: ImageStore) -> None:
    a, b = b"first image bytes", b"second image bytes"
    digests = store.put_many([a, b, a])
    assert digests == [digest_of(a), digest_of(b), digest_of(a)]
    assert store.get(digests[0]) == a and store.get(digests[1]) == b
    assert sorted(store.digests()) == sorted({digest_of(a), digest_of(b)})  # the same bytes are stored once
    assert store.stored_bytes() == len(a) + len(b)
    with pytest.raises(KeyError):
        store.get(digest_of(b"never stored"))
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")


def test_a_held_blob_survives_removal(store: ImageStore) -> None:
    (d,) = store.put_many([b"held"])
    with store.hold([d]):
        assert store.remove([d]) == 0
        assert store.get(d) == b"held"
    assert store.remove([d]) == 1
    assert not store.exists(d)


def test_nested_holds_count(store: ImageStore) -> None:
    (d,) = store.put_many([b"twice held"])
    with store.hold([d]):
        with store.hold([d]):
            pass
        assert store.remove([d]) == 0  # the outer hold is still there
    assert store.remove([d]) == 1


def test_sweep_keeps_live_and_recent_blobs(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    live, recent, old = store.put_many([b"live", b"recent", b"old"])
    past = time.time() - 7200
    for d in (live, old):
        os.utime(store.path(d), (past, past))
    stray = store.path(old).parent / ".tmp-leftover"
    stray.write_bytes(b"partial")
    os.utime(stray, (past, past))
    assert store.sweep({live}, grace_s=3600) == 1
    assert store.exists(live) and store.exists(recent) and not store.exists(old)
    assert not stray.exists()
    # A put of existing bytes refreshes the blob, so a sweep's grace counts from the newest write.
    os.utime(store.path(recent), (past, past))
    store.put_many([b"recent"])
    assert store.sweep({live}, grace_s=3600) == 0 and store.exists(recent)


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
@pytest.mark.parametrize("syncfs", [True, False])
def test_fsync_modes(tmp_path: Path, fsync: str, syncfs: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put is flushed (one syncfs of the filesystem, or an fsync per file and folder) unless --fsync never."""
    from lookalike.server.storage import image_store

    calls: list[str] = []
    real_fsync, real_syncfs = os.fsync, image_store._SYNCFS

    def fsync(fd: int) -> None:  # only this store's: other servers of the test process fsync their logs
        if str(tmp_path) in os.readlink(f"/proc/self/fd/{fd}"):
            calls.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    counted = (lambda fd: (calls.append("syncfs"), real_syncfs(fd))[1]) if syncfs and real_syncfs else None
    monkeypatch.setattr(image_store, "_SYNCFS", counted)
    ImageStore(tmp_path, fsync=fsync).put_many([b"a", b"b"])
    if fsync == "never":
        assert calls == []
    elif counted is not None:
        assert calls == ["syncfs"]
    else:
        assert calls.count("fsync") >= 3  # two files and their folder(s)


def test_remote_mirror_push_and_restore(tmp_path: Path) -> None:
    remote = LocalBlobStore(tmp_path / "oss")
    first = ImageStore(tmp_path / "a", remote=remote)
    a, b = first.put_many([b"alpha", b"beta"])
    assert first.push([a]) == 2 and first.push([a]) == 0  # everything stored since the last upload, once
    assert remote.exists(ImageStore.object_name(a)) and remote.exists(ImageStore.object_name(b))
    # A new machine restored from the OSS root reads the blob from there and caches it locally.
    second = ImageStore(tmp_path / "b", remote=remote)
    assert second.get(a) == b"alpha" and second.exists(a)
    with pytest.raises(KeyError):
        second.get(digest_of(b"never stored"))
    # After a restart nothing is known to be shipped: a snapshot checks each named blob once, uploads the missing.
    third = ImageStore(tmp_path / "a", remote=remote)
    (c,) = ImageStore(tmp_path / "a").put_many([b"gamma"])  # stored by the process before, never uploaded
    assert third.push([a, b, c]) == 1 and third.push([a, b, c]) == 0
    # Removing a shipped blob removes its OSS copy only once a snapshot no longer names it (collect_remote):
    # until then a restore from OSS may still need it.
    assert first.remove([a]) == 1
    assert remote.exists(ImageStore.object_name(a))
    assert first.collect_remote({a}) == 0 and remote.exists(ImageStore.object_name(a))
    assert first.collect_remote(set()) == 1 and not remote.exists(ImageStore.object_name(a))


def test_pending_blobs_are_uploaded_before_the_log_and_a_re_put_cancels_a_removal(tmp_path: Path) -> None:
    remote = LocalBlobStore(tmp_path / "oss")
    store = ImageStore(tmp_path / "local", remote=remote)
    a, b = store.put_many([b"one", b"two"])
    assert store.push_pending() == 2 and store.push_pending() == 0
    assert remote.exists(ImageStore.object_name(a)) and remote.exists(ImageStore.object_name(b))
    store.remove([a])
    store.put_many([b"one"])  # the same content again before the next snapshot: its OSS copy must stay
    assert store.collect_remote(set()) == 0 and remote.exists(ImageStore.object_name(a))
    (c,) = store.put_many([b"three"])
    store.remove([c])  # never shipped: nothing to upload, nothing to collect
    assert store.push_pending() == 0 and not remote.exists(ImageStore.object_name(c))


def test_remote_bytes_that_do_not_match_are_refused(tmp_path: Path) -> None:
    remote = LocalBlobStore(tmp_path / "oss")
    d = digest_of(b"genuine")
    remote.put(ImageStore.object_name(d), b"tampered")
    with pytest.raises(KeyError):
        ImageStore(tmp_path / "local", remote=remote).get(d)


def test_concurrent_hold_put_and_remove_never_lose_a_held_blob(tmp_path: Path) -> None:
    """Writers hold-then-put the same content while a remover keeps freeing it: inside a hold it always exists."""
    store = ImageStore(tmp_path, fsync="never")
    data = b"contended"
    d = digest_of(data)
    stop = threading.Event()
    missing: list[int] = []

    def writer() -> None:
        while not stop.is_set():
            with store.hold([d]):
                store.put_many([data])
                if not store.exists(d):
                    missing.append(1)

    def remover() -> None:
        while not stop.is_set():
            store.remove([d])

    threads = [threading.Thread(target=writer) for _ in range(3)] + [threading.Thread(target=remover)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert not missing
