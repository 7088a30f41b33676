"""A killed server keeps every acknowledged write; the log tells a torn tail from damage.

Before, a second server on the same data directory deleted the first one's open log (after a
``kill -9`` and a restart, acknowledged databases and an image were gone), and a flipped byte in
the last complete log record was cut off as a torn tail: one acknowledged write silently lost,
the damaged bytes truncated in place. Run with ``--fsync always`` (the promise at stake) and
``batch``.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest
from cli import LOOKALIKE, run, serving, stored_keys
from photos import encode, photo

HEADER = struct.Struct("<IIQ")  # the log's frame header: payload length, crc32c, seq


def frames(segment) -> list[tuple[int, int]]:
    """(offset, total length) of every frame in a log segment."""
    data = segment.read_bytes()
    out, off = [], 0
    while off + HEADER.size <= len(data):
        length = HEADER.unpack_from(data, off)[0]
        if off + HEADER.size + length > len(data) or length == 0:
            break
        out.append((off, HEADER.size + length))
        off += HEADER.size + length
    return out


def newest_segment(data):
    return sorted((data / "wal").glob("wal-*.log"))[-1]


def serve_once(data, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOKALIKE, "serve", "--port", "0", "--data-dir", str(data), *extra],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("fsync", ["always", "batch"])
def test_kill_9_keeps_acknowledged_writes_and_damage_is_not_cut_as_a_torn_tail(tmp_path, fsync):
    data = tmp_path / "data"
    pictures = []
    for name in ["chelsea", "coffee"]:
        pictures.append(tmp_path / f"{name}.jpg")
        pictures[-1].write_bytes(encode(photo(name)))
    with serving(data, "--fsync", fsync) as (first, address):
        srv = ("--server", address)
        for db in ["a", "b"]:
            assert run("db", "create", db, *srv).returncode == 0
        for p in pictures:  # one acknowledged write each: the second is the log's last record
            assert "registered 1 of 1" in run("add", "--db", "a", "--group", p.stem, str(p), *srv).stdout
        second = serve_once(data)  # a second server on the same directory is refused, and touches nothing
        assert second.returncode == 1 and f"PID {first.pid}" in second.stderr
        first.kill()
        first.wait(30)
    torn, damaged = tmp_path / "torn", tmp_path / "damaged"
    shutil.copytree(data, torn)
    shutil.copytree(data, damaged)

    with serving(data) as (_, address):  # every acknowledged write is back
        assert stored_keys(address, "a") == [("chelsea", 0), ("coffee", 0)]
        assert stored_keys(address, "b") == []

    segment = newest_segment(torn)
    off, size = frames(segment)[-1]
    with segment.open("r+b") as f:  # an incomplete final frame: what a crash mid-write leaves
        f.truncate(off + size - 3)
    with serving(torn) as (_, address):
        assert stored_keys(address, "a") == [("chelsea", 0)]

    segment = newest_segment(damaged)
    off, size = frames(segment)[-1]
    raw = bytearray(segment.read_bytes())
    raw[off + size - 5] ^= 0x40  # a complete final frame that fails its checksum: damage
    segment.write_bytes(bytes(raw))
    refused = serve_once(damaged)
    assert refused.returncode == 1, refused.stderr
    assert segment.name in refused.stderr and "--repair" in refused.stderr and "Traceback" not in refused.stderr
    assert segment.stat().st_size == len(raw)  # nothing cut in place
    with serving(damaged, "--repair") as (_, address):
        assert stored_keys(address, "a") == [("chelsea", 0)]
    moved = segment.with_name(segment.name + ".damaged")
    assert moved.exists() and bytes(raw[off : off + size]) in moved.read_bytes()


def test_automatic_intra_ids_stop_at_the_largest_id_the_api_accepts(tmp_path):
    picture = tmp_path / "x.jpg"
    picture.write_bytes(encode(photo("chelsea")))
    other = tmp_path / "y.jpg"
    other.write_bytes(encode(photo("coffee")))
    with serving(tmp_path / "data") as (_, address):
        srv = ("--server", address)
        assert run("db", "create", "d", *srv).returncode == 0
        last = str(2**53 - 1)
        assert run("add", "--db", "d", "--group", "g", "--intra-id", last, str(picture), *srv).returncode == 0
        auto = run("add", "--db", "d", "--group", "g", str(other), *srv)
        assert auto.returncode == 3 and "INTRA_ID_EXHAUSTED" in auto.stdout + auto.stderr
        assert stored_keys(address, "d") == [("g", 2**53 - 1)]  # nothing handed out that GetImage would refuse
        assert run("add", "--db", "d", "--group", "h", str(other), *srv).returncode == 0
