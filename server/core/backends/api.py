"""The backend contract: what the service needs from wherever databases live, and what both share.

Two implementations: the built-in store (``builtin/``: native exact scan + HNSW, WAL and
snapshots on this machine) and Milvus (``milvus/``: vectors and records in Milvus
collections, so any number of stateless replicas can serve them). The service talks only to
these protocols. Everything both backends must agree on lives here once: the value types,
the errors (one builder each, so reasons and messages never drift), the model-identity rule,
the retry window of request ids, and the export reader, so an export moves both ways.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
from lookalike.server import defaults
from lookalike.server.core.errors import ErrorKind, LookalikeError, not_found

if TYPE_CHECKING:
    from lookalike.server.core.backends.exports import ExportedDatabase

Key = tuple[str, int]


class SetRequest(NamedTuple):
    """One image to store; ``fingerprint`` says what was asked (see ``request_fingerprint``)."""

    group_id: str
    intra_id: int | None  # None: the next free one in the group
    request_id: str = ""
    attributes: dict[str, str] | None = None
    fingerprint: str = ""


RETRY_WINDOW = defaults.RETRY_WINDOW  # request ids remembered per database (the most recent ones), on both backends


@dataclass(frozen=True)
class Hit:
    group_id: str
    intra_id: int
    score: float
    attributes: dict[str, str] | None = None


@dataclass(frozen=True)
class Entry:
    group_id: str
    intra_id: int
    update_time: float
    vector: np.ndarray
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SetResult:
    key: Key
    replaced: bool
    replayed: bool = False  # the request id was seen before: this is the first call's result, nothing stored
    duplicate_score: float | None = None  # the duplicate check skipped it: ``key`` is the stored image it matches


# -- request ids (AIP-155) ---------------------------------------------------------------------
def content_digest(data: bytes) -> str:
    """The sha256 of what a write sent (image bytes, or a vector's float32 bytes)."""
    return hashlib.sha256(data).hexdigest()


def request_fingerprint(group_id: str, intra_id: int | None, content: str) -> str:
    """What a write asked for, compactly: the group, the intra_id (or "auto") and the content digest.

    A request id names one request: a retry must ask for the same key and send the same bytes.
    Attributes are left out, so a retry whose labels were spelled another way is still a retry.
    """
    group = hashlib.sha256(group_id.encode()).hexdigest()[:16]
    return f"{group}:{'auto' if intra_id is None else intra_id}:{content[:32]}"


_FINGERPRINT_PARTS = ("group_id", "intra_id", "content")


def request_id_reused(request_id: str, first: str, now: str) -> LookalikeError | None:
    """None when ``now`` asks for what ``first`` asked (or either is unknown), else REQUEST_ID_REUSED."""
    if not first or not now or first == now:
        return None
    a, b = first.split(":"), now.split(":")
    differs = [name for name, x, y in zip(_FINGERPRINT_PARTS, a, b, strict=False) if x != y] or ["content"]
    return LookalikeError(
        ErrorKind.ALREADY_EXISTS, "REQUEST_ID_REUSED",
        f"request_id {request_id[:64]!r} was used by an earlier write with a different {' and '.join(differs)}; "
        "a request id names one request: resend that request unchanged to get its result, or use a new "
        "request id for a new write",
    )  # fmt: skip


@dataclass(frozen=True)
class SnapshotInfo:
    time: float
    size_bytes: int
    image_count: int
    checkpoint_seq: int


@dataclass
class RetryPlan:
    """How one set call meets the retry window: what is answered from it, what is written.

    An id seen before answers with its first result (``replayed``) or, asked for something
    else, REQUEST_ID_REUSED; an id repeated inside the call is written once and the repeats
    answer with that write's result. Both backends use this, so they agree exactly.
    """

    requests: list[SetRequest]
    answers: dict[int, SetResult | LookalikeError] = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)
    repeats: dict[int, int] = field(default_factory=dict)  # position -> position of its first in the call

    @classmethod
    def make(
        cls, requests: list[SetRequest], lookup: Callable[[list[str]], dict[str, tuple[SetResult, str]]]
    ) -> RetryPlan:
        """``lookup(ids)`` is the window's (first result, fingerprint) of each id it holds."""
        requests = [r if isinstance(r, SetRequest) else SetRequest(*r) for r in requests]  # plain tuples too
        plan = cls(requests)
        seen = lookup(sorted({r.request_id for r in requests if r.request_id}))
        first: dict[str, int] = {}
        for k, r in enumerate(requests):
            rid = r.request_id
            if rid and rid in seen:
                result, fingerprint = seen[rid]
                plan.answers[k] = request_id_reused(rid, fingerprint, r.fingerprint) or replace(result, replayed=True)
            elif rid and rid in first:
                err = request_id_reused(rid, requests[first[rid]].fingerprint, r.fingerprint)
                if err is not None:
                    plan.answers[k] = err
                else:
                    plan.repeats[k] = first[rid]
            else:
                if rid:
                    first[rid] = k
                plan.todo.append(k)
        return plan

    def settle(self, written: dict[int, SetResult | LookalikeError]) -> list[SetResult | LookalikeError]:
        """One answer per request, in order, once ``todo`` is written."""
        out: list[SetResult | LookalikeError] = []
        for k in range(len(self.requests)):
            if k in written:
                out.append(written[k])
            elif k in self.repeats:
                first = written[self.repeats[k]]
                out.append(first if isinstance(first, LookalikeError) else replace(first, replayed=True))
            else:
                out.append(self.answers[k])
        return out


# -- errors both backends raise ---------------------------------------------------------------
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


def image_not_found(name: str, group_id: str, intra_id: int) -> LookalikeError:
    return not_found("IMAGE_NOT_FOUND", f"database {name!r} has no image group_id={group_id!r} intra_id={intra_id}")


def group_not_found(name: str, group_id: str) -> LookalikeError:
    return not_found("GROUP_NOT_FOUND", f"database {name!r} has no group {group_id!r}")


def intra_ids_exhausted(name: str, group_id: str) -> LookalikeError:
    return LookalikeError(
        ErrorKind.FAILED_PRECONDITION, "INTRA_ID_EXHAUSTED",
        f"group {group_id!r} of database {name!r} has used every automatic intra_id (the largest is 2**53 - 1); "
        "set intra_id explicitly, or use another group",
    )  # fmt: skip


def write_cancelled() -> LookalikeError:
    return LookalikeError(ErrorKind.UNAVAILABLE, "CANCELLED", "the call was cancelled; nothing was stored")


def model_mismatch(reason: str) -> LookalikeError:
    return LookalikeError(ErrorKind.FAILED_PRECONDITION, "MODEL_MISMATCH", reason)


def snapshot_damaged(name: str, why: str) -> LookalikeError:
    return LookalikeError(
        ErrorKind.INTERNAL, "SNAPSHOT_DAMAGED",
        f"database {name!r} is not served: {why}; restart the server with --repair to drop it (its images are "
        "lost) or restore its data directory",
    )  # fmt: skip


def not_ready(reason: str, message: str) -> LookalikeError:
    return LookalikeError(ErrorKind.UNAVAILABLE, reason, message)


def check_usable(foreign: str | None) -> None:
    """A database of another model is listed but never searched or written."""
    if foreign is not None:
        raise model_mismatch(foreign)


# -- the model-identity rule ------------------------------------------------------------------
def describe_model(model: dict[str, Any]) -> str:
    digest = str(model.get("digest", "?"))[:12]
    return f"{model.get('name', '?')} (dimension {model.get('dimension', '?')}, digest {digest})"


def foreign_reason(
    name: str, stored: dict[str, Any], dimension: int, model: dict[str, Any], server_dimension: int
) -> str | None:
    """Why a database of model ``stored`` must not be served by a server running ``model``, or None."""
    if stored.get("digest") == model.get("digest") and dimension == server_dimension:
        return None
    from lookalike.modelfile import preprocessing_mismatch

    differs = preprocessing_mismatch(stored.get("preprocessing", {}), model.get("preprocessing", {}),
                                     f"database {name!r}")  # fmt: skip
    if differs and stored.get("name") == model.get("name"):  # same weights' name, new pipeline
        return differs
    return (
        f"database {name!r} holds vectors of model {describe_model(stored)}, but this server runs "
        f"{describe_model(model)}; vectors of two models must not be mixed. Serve it with its model "
        f"(lookalike serve --model NAME=FILE), or re-embed its kept images with this one: "
        f"lookalike db reindex {name} --model MODEL"
    )


Loaded = list[tuple[dict[str, Any], int]]  # the models a server runs: (identity, dimension), the default first


def foreign_among(name: str, stored: dict[str, Any], dimension: int, loaded: Loaded) -> str | None:
    """None when one of the server's ``loaded`` models (identity, dimension) holds this database's vectors; else
    why not, said against the default model (the first)."""
    if any(stored.get("digest") == m.get("digest") and dimension == d for m, d in loaded):
        return None
    return foreign_reason(name, stored, dimension, *loaded[0])


# -- the protocols ----------------------------------------------------------------------------
class DatabaseHandle(Protocol):
    """One database as readers see it: identity, sizes, lookups, listing and search."""

    name: str
    dimension: int
    metric: str
    model: dict[str, Any]
    storage: str
    create_time: float
    keep: str

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
    """Every mutation and lookup of databases; errors are ``LookalikeError`` with stable reasons.

    Shared semantics (pinned by ``tests/server/backends/``): a request id seen before in the
    same database returns its first result (key and ``replaced``, marked ``replayed``) and
    changes nothing, or REQUEST_ID_REUSED when it asks for another key or content; the
    most recent ``RETRY_WINDOW`` ids per database are remembered, and an id is forgotten when
    the image it wrote is deleted (image, group, clear) or its database is deleted.
    """

    ready: threading.Event
    dimension: int
    model: dict[str, Any]

    def recover(self) -> None: ...

    def create(self, name: str, storage: str = "", keep: str = "none",
               model: tuple[dict[str, Any], int] | None = None) -> DatabaseHandle: ...  # fmt: skip

    def serve_models(self, loaded: list[tuple[dict[str, Any], int]]) -> None: ...

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
        duplicates: Any = None,
    ) -> list[SetResult | LookalikeError]:
        """One answer per request: its result, REQUEST_ID_REUSED, or (``duplicates``, a ``DuplicateCheck``)
        the duplicate check's answer."""
        ...

    def delete_image(self, name: str, group_id: str, intra_id: int) -> None: ...

    def delete_group(self, name: str, group_id: str) -> int: ...

    def clear(self, name: str) -> int: ...

    def checkpoint(self, *, push: bool = True) -> SnapshotInfo: ...

    def snapshot_database(self, name: str) -> SnapshotInfo: ...

    def export(self, name: str, location: str, oss: Any = None) -> SnapshotInfo: ...

    def import_(self, name: str, source: ExportedDatabase) -> DatabaseHandle: ...

    def replace(self, name: str, loaded: str) -> DatabaseHandle:
        """Database ``loaded`` takes the name ``name`` (dropping what had it) in one durable step."""
        ...

    def disk_bytes(self, name: str) -> int | None:
        """Bytes of a database's files on this machine at its last snapshot, where known."""
        ...

    def kept_digests(self) -> set[str]:
        """Every kept-image digest a live row names (what the image store must keep)."""
        ...

    def rename(self, moves: list[tuple[str, str]]) -> list[DatabaseHandle]:
        """Each (source, target): the sources take the targets' names in one step; a swap works."""
        ...

    def close(self, *, snapshot: bool = True) -> None: ...
