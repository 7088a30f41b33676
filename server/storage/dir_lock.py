"""One server per data directory: an exclusive lock held for the server's whole life.

Two servers on one directory would interleave their logs and delete each other's files (a
second server's shutdown snapshot removed the first one's open log). ``flock`` is released by
the kernel when the holder dies, even by ``kill -9``, so a crash never leaves a stale lock;
the holder's PID is written into the file so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "LOCK"


class DataDirInUse(OSError):
    """Another live process holds the data directory."""


class DataDirLock:
    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"data directory {self.path.parent.resolve()} is in use by another Lookalike server (PID {holder}); "
                f"stop it first (kill {holder}: it snapshots and exits) or start this one with another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the lock; the file stays (its PID is stale but harmless)
