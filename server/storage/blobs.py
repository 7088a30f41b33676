"""A small blob interface with two backends: a local directory and an OSS prefix.

Only whole-object put (atomic), get, ranged get, exists and delete: the snapshot protocol
names every object it needs in a manifest, so no backend ever has to list.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from lookalike.oss import OssClient, split_root


class BlobStore(Protocol):
    """Where snapshots (and shipped log pieces) live."""

    description: str

    def put(self, name: str, data: bytes | memoryview) -> None: ...
    def get(self, name: str) -> bytes: ...
    def get_range(self, name: str, start: int, length: int) -> bytes: ...
    def exists(self, name: str) -> bool: ...
    def delete(self, name: str) -> None: ...


def check_name(name: str) -> str:
    """Object names are made by the core from validated parts; refuse anything that could escape."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise ValueError(f"invalid object name {name!r}")
    return name


class LocalBlobStore:
    """A directory; ``put`` writes a temporary file, fsyncs it, renames it into place and fsyncs the folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.description = str(self.root)

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def put(self, name: str, data: bytes | memoryview) -> None:
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)

    def get(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def get_range(self, name: str, start: int, length: int) -> bytes:
        with open(self.path(name), "rb") as f:
            f.seek(start)
            return f.read(length)

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self, under: str) -> list[str]:
        """Every file below ``under`` (local only: used to collect garbage after a snapshot)."""
        base = self.path(under)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())


class OssBlobStore:
    """Objects under ``oss://bucket/prefix/`` through oss2 (put / get / head / delete / ranged get)."""

    def __init__(self, root: str, client: OssClient) -> None:
        self.bucket, self.prefix = split_root(root)
        self.client = client
        self.description = f"oss://{self.bucket}/{self.prefix}"

    def put(self, name: str, data: bytes | memoryview) -> None:
        payload = bytes(data) if isinstance(data, memoryview) else data
        self.client.put(self.bucket, self.prefix + check_name(name), payload)

    def get(self, name: str) -> bytes:
        return self.client.get(self.bucket, self.prefix + check_name(name))

    def get_range(self, name: str, start: int, length: int) -> bytes:
        return self.client.get(self.bucket, self.prefix + check_name(name), (start, start + length - 1))

    def exists(self, name: str) -> bool:
        return self.client.exists(self.bucket, self.prefix + check_name(name))

    def delete(self, name: str) -> None:
        self.client.delete(self.bucket, self.prefix + check_name(name))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(location: str, oss: OssClient | None = None) -> BlobStore:
    """``oss://bucket/prefix/`` or a local directory."""
    if location.startswith("oss://"):
        return OssBlobStore(location, oss or OssClient.from_env())  # the server always passes its own
    return LocalBlobStore(location)
