"""Start-up's deferred checks: an i8 database's float32 copy is verified after the server answers.

With ``check_in_background`` the float32 re-rank copy (four fifths of an i8 snapshot's bytes) is mapped
unverified; start-up returns and searches answer from it while a thread checks it. Until the check ends no
snapshot (and no compaction) may copy those rows into new files: new checksums would hide damage. Damage
found marks the database (calls and snapshots refused with SNAPSHOT_DAMAGED, the manifest untouched) and
reaches ``on_damage``; ``--repair`` checks before serving, so it drops the database as it always did.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from lookalike.server.core.backends.builtin import snapshot_files
from lookalike.server.core.backends.builtin.catalog import Catalog
from lookalike.server.core.backends.builtin.persistence import MANIFEST, Persistence
from lookalike.server.core.errors import LookalikeError
from lookalike.server.storage.segments import CorruptionError, get_manifest

DIM = 32
MODEL = {"name": "t", "digest": "x"}


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def results(db, queries: np.ndarray) -> list[list[tuple[str, int, float]]]:
    return [[(h.group_id, h.intra_id, round(h.score, 6)) for h in db.search(q, 10)[0]] for q in queries]


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Deferred checks wait for this event (set: they run at once)."""
    event = threading.Event()
    event.set()
    verify = snapshot_files.verify

    def held(*args: object) -> None:
        assert event.wait(60)
        verify(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot_files, "verify", held)
    yield event
    event.set()


def saved(path: Path) -> tuple[np.ndarray, list]:
    """An i8 database of two full chunks and a partial one, snapshotted; returns the queries and answers."""
    catalog = Catalog(DIM, MODEL, Persistence(path))
    catalog.recover()
    catalog.create("d", storage="i8")
    chunk_rows = catalog.get("d").index.rows.chunk_rows
    vecs = unit(2 * chunk_rows + 500, 1)
    for a in range(0, len(vecs), 20_000):
        part = vecs[a : a + 20_000]
        catalog.set_images("d", [(f"g{(a + i) % 40}", a + i, "", None) for i in range(len(part))], part)
    catalog.checkpoint()
    queries = unit(10, 2)
    before = results(catalog.get("d"), queries)
    catalog.close(snapshot=False)
    return queries, before


def opened(path: Path, damage: list[tuple[str, str]] | None = None, **kw: object) -> Catalog:
    hook = (lambda name, why: damage.append((name, why))) if damage is not None else None
    catalog = Catalog(DIM, MODEL, Persistence(path, check_in_background=True, on_damage=hook, **kw))
    catalog.recover()
    return catalog


def test_start_up_answers_before_the_float32_copy_is_checked_and_snapshots_wait_for_it(tmp_path, gate):
    queries, before = saved(tmp_path)
    gate.clear()
    catalog = opened(tmp_path)  # returns with the check held
    db = catalog.get("d")
    assert not db.checked.is_set() and len(db.unchecked) == 3  # every float32 file: two full chunks, the last
    assert results(db, queries) == before  # the exact re-rank reads the (mapped, unverified) copy
    catalog.set_images("d", [("new", 0, "", None)], queries[0][None])  # writes go on meanwhile
    done = threading.Event()
    checkpoint = threading.Thread(target=lambda: (catalog.checkpoint(), done.set()))
    checkpoint.start()
    checkpoint.join(0.5)
    assert checkpoint.is_alive() and not done.is_set()  # waits: it would rewrite the unverified last chunk
    gate.set()
    checkpoint.join(60)
    assert done.is_set() and db.checked.is_set() and db.unchecked == [] and db.damaged is None
    assert results(db, queries[1:]) == before[1:]
    catalog.close(snapshot=False)


def test_damage_found_after_start_up_refuses_the_database_and_snapshots_and_loses_nothing(tmp_path, gate):
    queries, _ = saved(tmp_path)
    store = Persistence(tmp_path).local
    manifest = get_manifest(store, MANIFEST)
    path = store.path(manifest["databases"]["d"]["full"][1]["name"])
    good = path.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0x04
    path.write_bytes(bytes(raw))

    damage: list[tuple[str, str]] = []
    gate.clear()
    catalog = opened(tmp_path, damage)
    db = catalog.get("d")
    db.search(queries[0], 5)  # served until the check gets there
    catalog.set_images("d", [("new", 0, "", None)], queries[0][None])  # acknowledged: in the log
    gate.set()
    assert db.checked.wait(60)
    assert len(damage) == 1 and damage[0][0] == "d" and str(path) in damage[0][1] and db.damaged == damage[0][1]
    with pytest.raises(LookalikeError) as err:
        catalog.get("d")  # what every search, read and write of it goes through
    assert err.value.reason == "SNAPSHOT_DAMAGED" and "--repair" in err.value.message and str(path) in err.value.message
    with pytest.raises(LookalikeError) as err:
        catalog.set_images("d", [("new", 1, "", None)], queries[1][None])
    assert err.value.reason == "SNAPSHOT_DAMAGED"
    with pytest.raises(LookalikeError) as err:
        catalog.checkpoint()  # a snapshot would give the damaged rows new checksums, and trim the log
    assert err.value.reason == "SNAPSHOT_DAMAGED"
    assert get_manifest(store, MANIFEST) == manifest  # nothing was written over the damaged files
    catalog.close(snapshot=False)

    path.write_bytes(good)  # the file restored: the write made before the damage was found is there
    catalog = opened(tmp_path, damage)
    db = catalog.get("d")
    assert db.checked.wait(60) and db.damaged is None and len(damage) == 1
    assert db.get("new", 0).vector @ queries[0] > 0.9999
    catalog.close(snapshot=False)

    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="damaged at byte offset"):
        Catalog(DIM, MODEL, Persistence(tmp_path)).recover()  # checked before serving: start-up stops
    catalog = opened(tmp_path, damage, repair=True)  # repair checks before serving, even when told background
    assert catalog.list() == [] and len(damage) == 1
    catalog.close(snapshot=False)
