"""`lookalike add` sends two streams at once, yet keeps automatic intra_ids in source order per group.

Against a fake client that numbers images per group in the order its calls arrive (as the server
does) and records how many calls overlap: concurrency is used where it cannot reorder ids, and not
where it could.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lookalike.client.importer import Source, run_import


class FakeClient:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.next_id: dict[str, int] = {}

    def bulk_set(self, database: str, items: list[tuple[Any, ...]]) -> SimpleNamespace:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            keys = []
            for item in items:  # numbered on arrival, like the server's write path
                group, intra = item.group_id, item.intra_id
                if intra is None:
                    intra = self.next_id.get(group, 0)
                self.next_id[group] = max(self.next_id.get(group, 0), intra + 1)
                keys.append(SimpleNamespace(group_id=group, intra_id=intra))
        time.sleep(0.05)  # the server at work; a second stream may arrive meanwhile
        with self.lock:
            self.active -= 1
        return SimpleNamespace(succeeded_count=len(items), replayed_count=0, keys=keys, failures=[],
                               skipped_duplicate_count=0, skipped_duplicates=[])  # fmt: skip

    def get_database(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(create_time=SimpleNamespace(seconds=1, nanos=0))


def _files(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / f"img{i:03d}.jpg"
        p.write_bytes(b"jpeg bytes %d" % i)
        out.append(p)
    return out


def test_distinct_groups_go_out_two_streams_at_a_time_and_merge_in_order(tmp_path: Path) -> None:
    files = _files(tmp_path, 40)
    client = FakeClient()
    s = run_import(client, "db", [Source(str(p), p.stem) for p in files], batch=4)  # type: ignore[arg-type]
    assert client.most == 2
    assert s.registered == 40 and [g for g, _ in s.keys] == [p.stem for p in files]


def test_one_group_waits_so_automatic_ids_follow_the_sources(tmp_path: Path) -> None:
    files = _files(tmp_path, 40)
    client = FakeClient()
    s = run_import(client, "db", [Source(str(p), "sku") for p in files], batch=4)  # type: ignore[arg-type]
    assert client.most == 1
    assert s.keys == [("sku", i) for i in range(40)]


def test_explicit_ids_in_one_group_may_overlap(tmp_path: Path) -> None:
    files = _files(tmp_path, 16)
    client = FakeClient()
    s = run_import(client, "db", [Source(str(p), "sku", i) for i, p in enumerate(files)], batch=4)  # type: ignore[arg-type]
    assert client.most == 2 and s.keys == [("sku", i) for i in range(16)]


def test_unreadable_files_are_failures_not_crashes(tmp_path: Path) -> None:
    files = _files(tmp_path, 6)
    client = FakeClient()
    srcs = [Source(str(p), p.stem) for p in files] + [Source(str(tmp_path / "gone.jpg"), "gone")]
    s = run_import(client, "db", srcs, batch=4, in_flight=2)  # type: ignore[arg-type]
    assert s.registered == 6 and [f["source"] for f in s.failures] == [str(tmp_path / "gone.jpg")]
