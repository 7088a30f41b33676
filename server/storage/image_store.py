"""Kept images: content-addressed blobs on this machine, mirrored to the OSS root like the snapshots.

A blob is named by the sha256 of its bytes (``images/ab/abcdef...``), so the same picture kept
by two databases, or registered twice, is stored once, and a name never changes meaning. Who
references a blob is the core's business (it counts references and calls ``remove``); this
layer only stores bytes, makes them durable before the write that references them is logged,
and keeps a blob that a write is about to reference (``hold``) from being removed under it.

Without a data directory (``--no-persist``) the blobs live in memory, like the databases.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lookalike.server.storage.blobs import BlobStore, fsync_dir

DIGEST = re.compile(r"[0-9a-f]{64}")


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs(fd)`` (Linux), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()
PREFIX = "images/"


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ValueError(f"not an image digest: {digest!r}")
    return digest


class ImageStore:
    """Blobs by digest under ``root`` (None: in memory); ``fsync`` "always"/"batch" make a put durable."""

    def __init__(self, root: str | Path | None, *, fsync: str = "batch", remote: BlobStore | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.fsync = fsync != "never"
        self.remote = remote
        self._memory: dict[str, bytes] = {}
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._shipped: set[str] = set()  # digests known to be in the remote root
        self._unshipped: set[str] = set()  # stored here since the last upload: uploaded before the log naming them
        self._remote_garbage: set[str] = set()  # removed here: removed from OSS once a snapshot no longer names them
        self._push_lock = threading.Lock()
        self._folders: set[Path] = set()
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    # -- names -------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        assert self.root is not None
        check_digest(digest)
        return self.root / digest[:2] / digest

    @staticmethod
    def object_name(digest: str) -> str:
        """The blob's name under the OSS root (and in an export folder)."""
        return f"{PREFIX}{digest[:2]}/{check_digest(digest)}"

    # -- writes ------------------------------------------------------------------------------
    def put_many(self, blobs: Iterable[bytes], digests_known: Sequence[str] | None = None) -> list[str]:
        """Store each blob (durable per ``fsync`` when this returns); their digests, in order (``digests_known``:
        already computed by the caller, who names the blobs by them).

        The caller holds the digests (``hold``) from before this call until the write that
        references them is applied, so a concurrent removal of the same content cannot win.
        """
        digests: list[str] = []
        dirs: set[Path] = set()
        written: list[Path] = []
        for k, data in enumerate(blobs):
            digest = digest_of(data) if digests_known is None else digests_known[k]
            digests.append(digest)
            if self.remote is not None:
                with self._lock:
                    self._remote_garbage.discard(digest)
                    if digest not in self._shipped:
                        self._unshipped.add(digest)
            if self.root is None:
                with self._lock:
                    self._memory.setdefault(digest, bytes(data))
                continue
            target = self.path(digest)
            if target.is_file():
                os.utime(target)  # fresh: a sweep's grace period counts from the newest reference
                continue
            if target.parent not in self._folders:  # 256 of them: made once, not asked again per blob
                target.parent.mkdir(exist_ok=True)
                self._folders.add(target.parent)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dirs.add(target.parent)
            written.append(target)
        if self.fsync and written:
            self._sync(written, dirs)
        return digests

    def _sync(self, files: list[Path], dirs: set[Path]) -> None:
        """Make the new files and their names durable: one ``syncfs`` of the store's filesystem where Linux has
        it (a chunk of 64 blobs costs one flush instead of 64 fsyncs plus their folders'), else each one."""
        assert self.root is not None
        if _SYNCFS is not None:
            fd = os.open(self.root, os.O_RDONLY)
            try:
                if _SYNCFS(fd) == 0:
                    return
            finally:
                os.close(fd)
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for folder in dirs:
            fsync_dir(folder)

    @contextmanager
    def hold(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep these blobs from removal while the write that references them is logged and applied."""
        held = [d for d in digests if d]
        with self._lock:
            self._held.update(held)
        try:
            yield
        finally:
            with self._lock:
                self._held.subtract(held)
                for d in held:
                    if self._held[d] <= 0:
                        del self._held[d]

    def remove(self, digests: Iterable[str]) -> int:
        """Delete blobs no live image references (the core decides which); held ones stay. Returns how many."""
        removed = 0
        for digest in digests:
            with self._lock:
                if self._held.get(digest):
                    continue
                if self.root is None:
                    removed += self._memory.pop(digest, None) is not None
                    continue
                try:
                    self.path(digest).unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
                self._unshipped.discard(digest)
                if digest in self._shipped:  # the OSS snapshot may still name it: gone there after the next one
                    self._remote_garbage.add(digest)
        return removed

    # -- reads -------------------------------------------------------------------------------
    def get(self, digest: str) -> bytes:
        """The blob's bytes; from the OSS root when this machine lost it (a restore from OSS). KeyError if none."""
        check_digest(digest)
        if self.root is None:
            with self._lock:
                if digest in self._memory:
                    return self._memory[digest]
            raise KeyError(digest)
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            pass
        if self.remote is not None:
            try:
                data = self.remote.get(self.object_name(digest))
            except (OSError, ValueError, KeyError):
                raise KeyError(digest) from None
            if digest_of(data) == digest:
                self.put_many([data])  # cached here again
                return data
        raise KeyError(digest)

    def exists(self, digest: str) -> bool:
        if self.root is None:
            return digest in self._memory
        return self.path(digest).is_file()

    def digests(self) -> list[str]:
        """Every blob stored here."""
        if self.root is None:
            with self._lock:
                return list(self._memory)
        return [p.name for p in self.root.glob("??/*") if DIGEST.fullmatch(p.name)]

    def stored_bytes(self) -> int:
        if self.root is None:
            return sum(len(v) for v in self._memory.values())
        return sum(p.stat().st_size for p in self.root.glob("??/*") if DIGEST.fullmatch(p.name))

    # -- upkeep ------------------------------------------------------------------------------
    def sweep(self, live: set[str], *, grace_s: float) -> int:
        """Remove blobs no live image references and no write has touched for ``grace_s`` (a put whose
        write failed, a removal a crash interrupted); also leftover temporary files. Returns how many."""
        now = time.time()
        stale = []
        for digest in self.digests():
            if digest in live:
                continue
            if self.root is not None:
                try:
                    if now - self.path(digest).stat().st_mtime < grace_s:
                        continue
                except FileNotFoundError:
                    continue
            stale.append(digest)
        if self.root is not None:
            for tmp in self.root.glob("??/.tmp-*"):
                try:
                    if now - tmp.stat().st_mtime >= grace_s:
                        tmp.unlink()
                except FileNotFoundError:
                    pass
        return self.remove(stale)

    def mark_shipped(self, digests: Iterable[str]) -> int:
        """Record blobs the caller knows the OSS root holds (a snapshot there names them); returns how many."""
        with self._lock:
            known = [d for d in digests if d not in self._unshipped]
            self._shipped.update(known)
        return len(known)

    def push_pending(self) -> int:
        """Upload the blobs stored since the last upload (before the log records naming them are shipped)."""
        if self.remote is None:
            return 0
        with self._push_lock:
            with self._lock:
                pending = sorted(self._unshipped)
            sent = sum(self._upload(d, check=False) for d in pending)
            with self._lock:
                self._unshipped.difference_update(pending)
            return sent

    def push(self, live: Iterable[str]) -> int:
        """Upload referenced blobs the OSS root does not have yet (at a snapshot, before its manifest); returns how
        many. After a restart nothing is known to be shipped: each is checked once (HEAD) and remembered."""
        if self.remote is None:
            return 0
        sent = self.push_pending()
        with self._push_lock:
            for digest in live:
                if digest not in self._shipped:
                    sent += self._upload(digest, check=True)
        return sent

    def _upload(self, digest: str, *, check: bool) -> int:
        assert self.remote is not None
        name = self.object_name(digest)
        if check and self.remote.exists(name):
            self._shipped.add(digest)
            return 0
        try:
            data = self.path(digest).read_bytes() if self.root is not None else self._memory[digest]
        except (FileNotFoundError, KeyError):
            return 0  # removed meanwhile
        self.remote.put(name, data)
        self._shipped.add(digest)
        return 1

    def collect_remote(self, live: set[str]) -> int:
        """After a snapshot's manifest is in OSS: remove the OSS copies of blobs removed here that nothing names."""
        if self.remote is None:
            return 0
        with self._lock:
            gone = [d for d in self._remote_garbage if d not in live and d not in self._unshipped]
        removed = 0
        for digest in gone:
            try:
                self.remote.delete(self.object_name(digest))
                removed += 1
            except (OSError, ValueError):
                continue  # an orphan in OSS costs bytes, not correctness; tried again after the next snapshot
            with self._lock:
                self._remote_garbage.discard(digest)
                self._shipped.discard(digest)
        return removed
