"""The write-ahead log on real files: order, torn tails, corruption, repair, trimming, group commit."""

from __future__ import annotations

import os
import threading

import pytest
from lookalike.server.storage.segments import CorruptionError
from lookalike.server.storage.wal import HEADER, WriteAheadLog


def write(tmp_path, payloads, **kw):
    wal = WriteAheadLog(tmp_path, **kw)
    assert list(wal.scan()) == []
    wal.open()
    seqs = [wal.append(p) for p in payloads]
    wal.close()
    return seqs


def test_records_come_back_in_order_across_segments(tmp_path):
    payloads = [os.urandom(100 + i) for i in range(200)]
    assert write(tmp_path, payloads, segment_bytes=2000) == list(range(1, 201))
    wal = WriteAheadLog(tmp_path)
    assert len(wal.segments()) > 5
    assert list(wal.scan()) == list(enumerate(payloads, start=1))
    wal.open()  # appending continues the sequence in a fresh segment
    assert wal.append(b"next") == 201
    wal.close()
    assert list(WriteAheadLog(tmp_path).scan())[-1] == (201, b"next")


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size + 3])
def test_a_torn_tail_is_cut_off_with_a_warning(tmp_path, caplog, cut):
    write(tmp_path, [b"a" * 50, b"b" * 50, b"c" * 50])
    (seg,) = WriteAheadLog(tmp_path).segments()
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) - (HEADER.size + 50) + cut])  # the last record half written
    wal = WriteAheadLog(tmp_path)
    assert [s for s, _ in wal.scan()] == [1, 2]
    assert "torn tail" in caplog.text and wal.report.truncated
    assert seg.stat().st_size == 2 * (HEADER.size + 50)  # truncated on disk
    wal.open()
    assert wal.append(b"d") == 3  # the torn record's number is reused: it was never acknowledged


def test_a_flipped_byte_in_the_middle_stops_start_up_with_file_and_offset(tmp_path):
    write(tmp_path, [bytes([i]) * 40 for i in range(10)])
    (seg,) = WriteAheadLog(tmp_path).segments()
    data = bytearray(seg.read_bytes())
    offset = 3 * (HEADER.size + 40) + HEADER.size + 5  # inside record 4's payload
    data[offset] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as err:
        list(WriteAheadLog(tmp_path).scan())
    assert str(seg) in str(err.value) and err.value.offset == 3 * (HEADER.size + 40)
    assert "--repair" in str(err.value)
    wal = WriteAheadLog(tmp_path)
    assert [s for s, _ in wal.scan(repair=True)] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert len(wal.report.dropped) == 1 and "after sequence 3" in wal.report.dropped[0]


def test_a_damaged_length_field_is_repaired_by_finding_the_next_valid_record(tmp_path):
    write(tmp_path, [bytes([i]) * 40 for i in range(6)])
    (seg,) = WriteAheadLog(tmp_path).segments()
    data = bytearray(seg.read_bytes())
    data[2 * (HEADER.size + 40)] ^= 0x7F  # record 3's length
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptionError):
        list(WriteAheadLog(tmp_path).scan())
    assert [s for s, _ in WriteAheadLog(tmp_path).scan(repair=True)] == [1, 2, 4, 5, 6]


def test_trim_removes_only_segments_a_snapshot_covers(tmp_path):
    wal = WriteAheadLog(tmp_path, segment_bytes=10 * (HEADER.size + 10))
    list(wal.scan())
    wal.open()
    for _ in range(55):
        wal.append(b"x" * 10)
    before = wal.segments()
    wal.trim(25)
    after = wal.segments()
    assert len(after) < len(before)
    wal.close()
    assert [s for s, _ in WriteAheadLog(tmp_path).scan()][0] <= 26  # nothing after 25 was lost
    assert [s for s, _ in WriteAheadLog(tmp_path).scan()][-1] == 55


def test_always_mode_shares_fsyncs_between_concurrent_writers(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync

    def counting_fsync(fd):
        calls.append(fd)
        real_fsync(fd)

    wal = WriteAheadLog(tmp_path, fsync="always")
    list(wal.scan())
    wal.open()
    monkeypatch.setattr(os, "fsync", counting_fsync)
    barrier = threading.Barrier(8)

    def writer():
        barrier.wait()
        for _ in range(50):
            wal.wait_durable(wal.append(b"y" * 64))

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wal._synced == 400
    assert len(calls) < 400  # group commit: fewer fsyncs than acknowledged writes
    wal.close()


@pytest.mark.parametrize("where", ["payload", "header-crc"])
def test_a_flipped_byte_in_the_last_complete_record_is_damage_not_a_torn_tail(tmp_path, where):
    """The last record is whole, so it may have been acknowledged (fsync always): never cut it silently."""
    write(tmp_path, [bytes([i]) * 40 for i in range(5)], fsync="always")
    (seg,) = WriteAheadLog(tmp_path).segments()
    data = bytearray(seg.read_bytes())
    last = 4 * (HEADER.size + 40)
    data[last + (HEADER.size + 7 if where == "payload" else 5)] ^= 0x01
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as err:
        list(WriteAheadLog(tmp_path).scan())
    assert err.value.offset == last and "--repair" in str(err.value)
    assert seg.read_bytes() == bytes(data)  # nothing was cut
    wal = WriteAheadLog(tmp_path)
    assert [s for s, _ in wal.scan(repair=True)] == [1, 2, 3, 4]
    aside = seg.with_name(seg.name + ".damaged")
    kept = aside.read_bytes()
    assert kept[16:] == bytes(data[last:])  # the damaged record, kept beside the log (after offset and length)
    assert int.from_bytes(kept[:8], "little") == last
    assert seg.stat().st_size == last
    wal.open()
    assert wal.append(b"next") == 5


def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path):
    """A file system may leave zeros where an interrupted append was going: nothing was written there."""
    write(tmp_path, [b"a" * 50, b"b" * 50])
    (seg,) = WriteAheadLog(tmp_path).segments()
    seg.write_bytes(seg.read_bytes() + bytes(4096))
    wal = WriteAheadLog(tmp_path)
    assert [s for s, _ in wal.scan()] == [1, 2]
    assert wal.report.truncated and seg.stat().st_size == 2 * (HEADER.size + 50)
