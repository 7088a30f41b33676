"""The write-ahead log: framed, length-prefixed, CRC32C-checksummed records in segment files.

Frame: ``u32 payload length | u32 crc32c(seq, payload) | u64 seq | payload``. Sequence numbers
are consecutive across segments (``wal-<first seq>.log``), so a segment can be trimmed by
name once a snapshot covers it.

Durability per ``fsync`` mode, for a record whose ``append`` + ``wait_durable`` returned:
- ``always``: fsynced before the call returns; concurrent writers share one fsync (group commit).
- ``batch``: written to the operating system before the call returns (survives a killed
  process) and fsynced within ``fsync_interval_s``; a power loss can lose that window.
- ``never``: written to the operating system; the kernel flushes it when it likes (~30 s).

A torn tail, the only thing a crash can leave (an incomplete final frame: a short header or a
short payload, or zeros a file system left after a power loss), is cut off with a warning.
Anything else that fails its checks is damage, at the end of the log as in its middle: a
complete final frame whose checksum fails may be an acknowledged write (``--fsync always``
promised it), so start-up stops with the file and offset, unless ``repair`` is set, which moves
the damaged bytes to ``<segment>.damaged`` beside the log and logs which offsets went.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import crc32c
from lookalike.server import defaults
from lookalike.server.storage.blobs import fsync_dir
from lookalike.server.storage.segments import CorruptionError

log = logging.getLogger(__name__)
HEADER = struct.Struct("<IIQ")
MAX_RECORD = 1 << 30
FSYNC_MODES = defaults.FSYNC_MODES


def frame_crc(seq: int, payload: bytes | memoryview) -> int:
    return crc32c.crc32c(payload, crc32c.crc32c(struct.pack("<Q", seq)))


def segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def segment_first_seq(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def _frame_at(data: memoryview, off: int) -> tuple[int, int] | None:
    """(seq, payload length) of a valid frame at ``off``, else None."""
    if off + HEADER.size > len(data):
        return None
    length, crc, seq = HEADER.unpack_from(data, off)
    end = off + HEADER.size + length
    if length > MAX_RECORD or end > len(data):
        return None
    if frame_crc(seq, data[off + HEADER.size : end]) != crc:
        return None
    return seq, length


def _torn(data: memoryview, off: int) -> bool:
    """Whether the bytes from ``off`` are what an interrupted append leaves: an incomplete frame, or zeros."""
    rest = len(data) - off
    if rest < HEADER.size:
        return True
    length, _, _ = HEADER.unpack_from(data, off)
    if length <= MAX_RECORD and HEADER.size + length > rest:
        return True
    return bytes(data[off:]).count(0) == rest  # a file system's zero fill after a power loss: nothing was written there


def _keep_damaged(path: Path, off: int, data: memoryview) -> Path:
    """Append damaged bytes to ``<segment>.damaged`` (with their offset), durably, before they leave the log."""
    aside = path.with_name(path.name + ".damaged")
    with open(aside, "ab") as f:
        f.write(struct.pack("<QQ", off, len(data)))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)
    return aside


def iter_frames(data: bytes | memoryview, where: str) -> Iterator[tuple[int, bytes]]:
    """Every frame of a complete buffer (a shipped piece); any damage is an error."""
    view = memoryview(data)
    off = 0
    while off < len(view):
        frame = _frame_at(view, off)
        if frame is None:
            raise CorruptionError(where, off, "invalid log record")
        seq, length = frame
        yield seq, bytes(view[off + HEADER.size : off + HEADER.size + length])
        off += HEADER.size + length


@dataclass
class ScanReport:
    truncated: list[str]
    dropped: list[str]


class WriteAheadLog:
    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: str = defaults.FSYNC,
        fsync_interval_s: float = defaults.FSYNC_INTERVAL_MS / 1000.0,
        segment_bytes: int = 64 << 20,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync mode {fsync!r} is not one of {', '.join(FSYNC_MODES)}")
        self.directory = Path(directory)
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._fd: int | None = None
        self._segment_first = 0
        self._size = 0
        self._next = 1
        self._written = 0
        self._synced = 0
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        self.report = ScanReport([], [])

    # -- recovery --------------------------------------------------------------------------
    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("wal-*.log"), key=segment_first_seq)

    def scan(self, *, repair: bool = False) -> Iterator[tuple[int, bytes]]:
        """Yield every (seq, payload) in order; cut a torn tail; stop at damage unless ``repair``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = self.segments()
        last_seq = 0
        for index, path in enumerate(segments):
            is_last = index == len(segments) - 1
            data = memoryview(path.read_bytes())
            off = 0
            while off < len(data):
                frame = _frame_at(data, off)
                if frame is not None and (last_seq == 0 or frame[0] == last_seq + 1 or repair and frame[0] > last_seq):
                    seq, length = frame
                    yield seq, bytes(data[off + HEADER.size : off + HEADER.size + length])
                    last_seq = seq
                    off += HEADER.size + length
                    continue
                resume = self._next_valid(data, off + 1, last_seq)
                if resume is None and is_last and _torn(data, off):
                    msg = f"{path}: torn tail at byte offset {off} ({len(data) - off} bytes) cut off"
                    log.warning("write-ahead log %s", msg)
                    self.report.truncated.append(msg)
                    with open(path, "r+b") as f:
                        f.truncate(off)
                        os.fsync(f.fileno())
                    break
                what = "invalid record" if frame is None else f"sequence {frame[0]} where {last_seq + 1} was expected"
                if not repair:
                    where = "valid records follow" if resume is not None else "a complete record fails its checks"
                    raise CorruptionError(
                        str(path),
                        off,
                        f"{what}; {where}, so this is damage, not a torn tail "
                        "(start with --repair to move the damaged bytes aside to a .damaged file)",
                    )
                stop = resume if resume is not None else len(data)
                aside = _keep_damaged(path, off, data[off:stop])
                msg = f"{path}: moved bytes {off}-{stop} ({what}) after sequence {last_seq} to {aside}"
                log.error("repair: %s", msg)
                self.report.dropped.append(msg)
                if resume is None:  # damage at the end: the bytes are kept aside, the log ends before them
                    with open(path, "r+b") as f:
                        f.truncate(off)
                        os.fsync(f.fileno())
                    break
                off = stop
        self._next = last_seq + 1
        if segments:
            self._next = max(self._next, segment_first_seq(segments[-1]))

    @staticmethod
    def _next_valid(data: memoryview, start: int, last_seq: int) -> int | None:
        for off in range(start, len(data) - HEADER.size + 1):
            length, _, seq = HEADER.unpack_from(data, off)
            if seq > last_seq and seq < last_seq + (1 << 32) and length <= len(data) - off - HEADER.size:
                if _frame_at(data, off) is not None:
                    return off
        return None

    def open(self, *, after_seq: int = 0) -> None:
        """Start appending (after ``scan``) in a fresh segment, numbering after ``after_seq`` at least.

        ``after_seq`` is the snapshot's position: with the log trimmed (or restored from OSS without
        later records) the sequence must still continue past everything the snapshot covers.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._next = max(self._next, after_seq + 1)
        with self._lock:
            self._written = self._synced = self._next - 1
            self._open_segment_locked()
        if self.fsync == "batch":
            self._flusher = threading.Thread(target=self._flush_loop, name="wal-fsync", daemon=True)
            self._flusher.start()

    # -- appending -------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        return self._written

    def append(self, payload: bytes) -> int:
        """Write one record; returns its sequence number. Durable per mode after ``wait_durable``."""
        if len(payload) > MAX_RECORD:
            raise ValueError(f"log record of {len(payload)} bytes is over the {MAX_RECORD} byte limit")
        with self._lock:
            if self._fd is None:
                raise RuntimeError("the write-ahead log is closed")
            seq = self._next
            header = HEADER.pack(len(payload), frame_crc(seq, payload), seq)
            if self._size > 0 and self._size + len(header) + len(payload) > self.segment_bytes:
                self._rotate_locked()
            _write_all(self._fd, [header, payload])
            self._size += len(header) + len(payload)
            self._next = seq + 1
            self._written = seq
            return seq

    def wait_durable(self, seq: int) -> None:
        if self.fsync == "always":
            self.sync_to(seq)

    def sync_to(self, seq: int) -> None:
        """fsync until ``seq`` is on disk; whoever holds the lock syncs for everyone waiting."""
        if self._synced >= seq:
            return
        with self._sync_lock:
            if self._synced >= seq:
                return
            with self._lock:
                target, fd = self._written, self._fd
            if fd is not None:
                os.fsync(fd)
            self._synced = max(self._synced, target)

    def _flush_loop(self) -> None:
        while not self._closed.wait(self.fsync_interval_s):
            if self._written > self._synced:
                try:
                    self.sync_to(self._written)
                except OSError:
                    log.exception("write-ahead log fsync failed")

    def rotate(self) -> int:
        """Close the current segment (fsynced) and start a new one; returns the new first seq."""
        with self._lock:
            if self._size > 0:
                self._rotate_locked()
            return self._segment_first

    def _rotate_locked(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        self._synced = max(self._synced, self._written)
        os.close(self._fd)
        self._open_segment_locked()

    def _open_segment_locked(self) -> None:
        self._segment_first = self._next
        path = self.directory / segment_name(self._next)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        fsync_dir(self.directory)

    def trim(self, upto_seq: int) -> list[Path]:
        """Delete closed segments whose every record is ``<= upto_seq`` (covered by a durable snapshot)."""
        removed = []
        with self._lock:
            segments = self.segments()
            for path, nxt in zip(segments, segments[1:], strict=False):
                if segment_first_seq(path) >= self._segment_first:
                    break
                if segment_first_seq(nxt) - 1 <= upto_seq:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        if removed:
            fsync_dir(self.directory)
        return removed

    def read_since(self, after_seq: int, max_bytes: int = 64 << 20, upto: int | None = None) -> tuple[bytes, int]:
        """Raw frames of records ``> after_seq`` written so far, and not past ``upto`` (for shipping); (bytes, last
        seq in them)."""
        with self._lock:
            written = self._written if upto is None else min(self._written, upto)
        out: list[bytes] = []
        total, last = 0, after_seq
        segments = self.segments()
        for path, nxt in zip(segments, [*segments[1:], None], strict=True):
            if nxt is not None and segment_first_seq(nxt) - 1 <= after_seq:
                continue
            data = memoryview(path.read_bytes())
            off = 0
            while off < len(data) and last < written:
                frame = _frame_at(data, off)
                if frame is None:
                    break
                seq, length = frame
                end = off + HEADER.size + length
                if seq > after_seq:
                    if total and total + end - off > max_bytes:
                        return b"".join(out), last
                    out.append(bytes(data[off:end]))
                    total += end - off
                    last = seq
                off = end
        return b"".join(out), last

    def close(self) -> None:
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
            self._synced = self._written


def _write_all(fd: int, parts: list[bytes]) -> None:
    data = b"".join(parts) if len(parts) > 1 and sum(map(len, parts)) < (1 << 16) else None
    if data is not None:
        parts = [data]
    for part in parts:
        view = memoryview(part)
        while view:
            n = os.write(fd, view)
            view = view[n:]
