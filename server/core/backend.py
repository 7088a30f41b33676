"""The index backend seam: what the service and transports need from wherever databases live.

Two implementations: the built-in store (``catalog.Catalog``: native exact scan + HNSW, WAL
and snapshots on this machine) and Milvus (``milvus_catalog.MilvusCatalog``: the vectors and
records live in a Milvus collection, so any number of stateless replicas can serve them).
Transports and ``LookalikeService`` talk only to these protocols, so every RPC, the PAI
JSON API and the CLI behave the same on both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from lookalike.server.core.database import Entry, Hit, Key
from lookalike.server.core.errors import ErrorKind, LookalikeError, not_found

# (group_id, intra_id or None for the next free one, request_id, attributes)
SetRequest = tuple[str, int | None, str, dict[str, str] | None]


def database_not_found(name: str) -> LookalikeError:
    return not_found("DATABASE_NOT_FOUND", f"database {name!r} does not exist; create it first (CreateDatabase)")


def database_exists(name: str) -> LookalikeError:
    return LookalikeError(ErrorKind.ALREADY_EXISTS, "DATABASE_EXISTS", f"database {name!r} already exists")


def database_replaced(name: str) -> LookalikeError:
    return LookalikeError(
        ErrorKind.FAILED_PRECONDITION, "DATABASE_REPLACED",
        f"database {name!r} was deleted (and maybe re-created) during this stream; the items before "
        "this point were registered in the old database",
    )  # fmt: skip


def write_cancelled() -> LookalikeError:
    return LookalikeError(ErrorKind.UNAVAILABLE, "CANCELLED", "the call was cancelled; nothing was stored")


@dataclass(frozen=True)
class SetResult:
    key: Key
    replaced: bool


@dataclass(frozen=True)
class SnapshotInfo:
    time: float
    size_bytes: int
    image_count: int
    checkpoint_seq: int


class DatabaseHandle(Protocol):
    """One database as readers see it: identity, sizes, lookups, listing and search."""

    name: str
    dimension: int
    metric: str
    model: dict[str, Any]
    storage: str
    create_time: float

    @property
    def size(self) -> int: ...

    @property
    def group_count(self) -> int: ...

    def check_usable(self) -> None: ...

    def get(self, group_id: str, intra_id: int) -> Entry: ...

    def list(self, *, group_id: str | None, after: Key | None, limit: int) -> tuple[list[Entry], bool]: ...

    def search_tier(
        self,
        query: np.ndarray,
        top_k: int,
        *,
        one_per_group: bool = False,
        min_score: float | None = None,
        exclude: Key | None = None,
        where: dict[str, str] | None = None,
        group_prefix: str = "",
        with_attributes: bool = True,
    ) -> tuple[list[Hit], int, str]: ...


class IndexBackend(Protocol):
    """Every mutation and lookup of databases; errors are ``LookalikeError`` with stable reasons."""

    ready: threading.Event
    dimension: int
    model: dict[str, Any]

    def recover(self) -> None: ...

    def create(self, name: str, storage: str = "") -> DatabaseHandle: ...

    def get(self, name: str, *, usable: bool = True) -> DatabaseHandle: ...

    def list(self) -> list[DatabaseHandle]: ...

    def delete(self, name: str) -> None: ...

    def set_images(
        self,
        name: str,
        requests: list[SetRequest],
        vectors: np.ndarray,
        *,
        expect: DatabaseHandle | None = None,
        should_continue: Callable[[], bool] | None = None,
    ) -> list[SetResult]: ...

    def delete_image(self, name: str, group_id: str, intra_id: int) -> None: ...

    def delete_group(self, name: str, group_id: str) -> int: ...

    def clear(self, name: str) -> int: ...

    def checkpoint(self, *, push: bool = True) -> SnapshotInfo: ...

    def snapshot_database(self, name: str) -> SnapshotInfo: ...

    def export(self, name: str, location: str, oss: Any = None) -> SnapshotInfo: ...

    def import_(self, name: str, location: str, oss: Any = None) -> DatabaseHandle: ...

    def close(self, *, snapshot: bool = True) -> None: ...
