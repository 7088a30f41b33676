"""What every transport needs: the embedder, the databases and the limits, in one place.

Transports (gRPC now, the PAI-compatible HTTP gateway later) translate their wire
messages into these calls, so behaviour and errors are the same on every wire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
from lookalike.server.core.backend import DatabaseHandle, IndexBackend
from lookalike.server.core.catalog import Catalog
from lookalike.server.core.database import Entry, Hit, Key
from lookalike.server.core.embedder import Embedder
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid
from lookalike.server.core.hnsw import HnswSettings
from lookalike.server.core.model_identity import model_identity
from lookalike.server.core.paging import decode_token, encode_token, page_size
from lookalike.server.core.persistence import Persistence
from lookalike.server.core.validation import (
    check_attributes,
    check_database_name,
    check_group_id,
    check_intra_id,
    check_vector,
)

BULK_CHUNK = 32
DEFAULT_TOP_K = 10
MAX_REQUEST_ID_LEN = 128
MAX_CLIENT_REF_ECHO = 256
SUMMARY_BUDGET_BYTES = 4 << 20  # failures and keys listed in a bulk summary, so it always fits a message


@dataclass(frozen=True)
class Limits:
    """What one call may ask for; each is a server setting (``lookalike serve --help``)."""

    max_top_k: int = 1000
    max_embed_images: int = 256
    max_stream_items: int = 1_000_000

    @classmethod
    def from_config(cls, config: object) -> Limits:
        return cls(**{f: getattr(config, f) for f in ("max_top_k", "max_embed_images", "max_stream_items")})


@dataclass(frozen=True)
class Query:
    """Exactly one of image / vector / registered."""

    image: bytes | None = None
    vector: Sequence[float] | None = None
    registered: Key | None = None


@dataclass(frozen=True)
class BulkItem:
    group_id: str
    intra_id: int | None
    image: bytes | None = None
    vector: Sequence[float] | None = None
    client_ref: str = ""
    database: str = ""  # empty, or must repeat the stream's database
    request_id: str = ""
    attributes: dict[str, str] | None = None


@dataclass
class BulkFailure:
    index: int
    client_ref: str
    reason: str
    message: str


@dataclass
class BulkResult:
    """What a stream did; counts only what is durable. Lists are cut to a byte budget."""

    received: int = 0
    succeeded: int = 0
    keys: list[Key] = field(default_factory=list)
    failures: list[BulkFailure] = field(default_factory=list)
    failed: int = 0
    keys_truncated: bool = False
    failures_truncated: bool = False
    _budget: int = SUMMARY_BUDGET_BYTES

    def add_key(self, key: Key) -> None:
        self.succeeded += 1
        cost = len(key[0]) + 16
        if self.keys_truncated or cost > self._budget:
            self.keys_truncated = True
            return
        self._budget -= cost
        self.keys.append(key)

    def add_failure(self, failure: BulkFailure) -> None:
        self.failed += 1
        cost = len(failure.client_ref) + len(failure.message) + len(failure.reason) + 16
        if self.failures_truncated or cost > self._budget:
            self.failures_truncated = True
            return
        self._budget -= cost
        self.failures.append(failure)


def similarity(cosine: float) -> float:
    """The [0, 1] similarity of the API: cosine clipped at 0 (opposite and unrelated look alike: not at all)."""
    return max(0.0, min(1.0, cosine))


def check_request_id(request_id: str) -> str:
    if len(request_id) > MAX_REQUEST_ID_LEN or not request_id.isprintable():
        raise invalid(
            "REQUEST_ID_INVALID", f"request_id must be at most {MAX_REQUEST_ID_LEN} printable characters (e.g. a UUID)"
        )
    return request_id


class LookalikeService:
    def __init__(
        self,
        embedder: Embedder,
        persistence: Persistence | None = None,
        limits: Limits | None = None,
        hnsw: HnswSettings | None = None,
        backend: Callable[[int, dict[str, Any]], IndexBackend] | None = None,
    ) -> None:
        """``backend`` builds the index backend from (dimension, model identity); default: the built-in store."""
        self.embedder = embedder
        self.limits = limits or Limits()
        self.model = model_identity(embedder.module, embedder.meta)
        self.catalog: IndexBackend = (
            backend(embedder.dimension, self.model) if backend is not None
            else Catalog(embedder.dimension, self.model, persistence, hnsw=hnsw)
        )  # fmt: skip

    # -- matching --------------------------------------------------------------------------
    def match(self, image_a: bytes, image_b: bytes) -> tuple[float, float]:
        """(similarity in [0, 1], cosine) of the two images' embeddings."""
        a = self.embedder.prepare(image_a, field="image_a")
        b = self.embedder.prepare(image_b, field="image_b")
        va, vb = self.embedder.embed_prepared([a, b])
        cosine = float(np.clip(np.dot(va, vb), -1.0, 1.0))
        return similarity(cosine), cosine

    def embed(self, images: Sequence[bytes]) -> np.ndarray:
        if not images:
            raise invalid("IMAGE_MISSING", "send at least one image")
        if len(images) > self.limits.max_embed_images:
            raise invalid(
                "TOO_MANY_IMAGES",
                f"{len(images)} images in one call; send at most {self.limits.max_embed_images} (--max-embed-images)",
            )
        return self.embedder.embed(images)

    # -- databases -------------------------------------------------------------------------
    def list_databases(self, size: int, token: str) -> tuple[list[DatabaseHandle], str]:
        size = page_size(size)
        after = decode_token(token)
        if after is not None and not isinstance(after, str):
            raise invalid("PAGE_TOKEN_INVALID", "page_token is not one this server issued")
        dbs = [db for db in self.catalog.list() if after is None or db.name > after]
        page = dbs[:size]
        return page, (encode_token(page[-1].name) if len(dbs) > size else "")

    def list_images(self, database: str, group_id: str | None, size: int, token: str) -> tuple[list[Entry], str]:
        db = self.catalog.get(database)
        size = page_size(size)
        cursor = decode_token(token)
        after = None
        if cursor is not None:
            shaped = isinstance(cursor, list) and len(cursor) == 2
            if not (shaped and isinstance(cursor[0], str) and isinstance(cursor[1], int)):
                raise invalid("PAGE_TOKEN_INVALID", "page_token is not one this server issued")
            after = (cursor[0], cursor[1])
        entries, more = db.list(group_id=group_id, after=after, limit=size)
        token = encode_token([entries[-1].group_id, entries[-1].intra_id]) if more and entries else ""
        return entries, token

    def get_image(self, database: str, group_id: str, intra_id: int) -> Entry:
        check_group_id(group_id)
        check_intra_id(intra_id)
        return self.catalog.get(database).get(group_id, intra_id)

    # -- registration ----------------------------------------------------------------------
    def vector_for(self, dimension: int, image: bytes | None, vector: Sequence[float] | None) -> np.ndarray:
        if vector is not None:
            return check_vector(vector, dimension)
        if image is None:
            raise invalid("IMAGE_MISSING", "send an image (encoded bytes) or a vector to register")
        return self.embedder.embed([image], field="image")[0]

    def set_image(
        self,
        database: str,
        group_id: str,
        intra_id: int | None,
        image: bytes | None,
        vector: Sequence[float] | None,
        *,
        request_id: str = "",
        attributes: dict[str, str] | None = None,
        should_continue: Callable[[], bool] | None = None,
    ) -> tuple[Key, bool]:
        db = self.catalog.get(database)
        check_group_id(group_id)
        check_request_id(request_id)
        attributes = check_attributes(attributes)
        if intra_id is not None:
            check_intra_id(intra_id)
        vec = self.vector_for(db.dimension, image, vector)  # validate everything before logging anything
        (result,) = self.catalog.set_images(
            database, [(group_id, intra_id, request_id, attributes)], vec[np.newaxis], should_continue=should_continue
        )
        return result.key, result.replaced

    def bulk_set(
        self, database: str, items: Iterable[BulkItem], should_continue: Callable[[], bool] | None = None
    ) -> BulkResult:
        """Register a stream of items; bad ones are reported, good ones land in stream order.

        Items are taken in chunks of ``BULK_CHUNK``: a chunk's images are decoded in parallel,
        embedded in one model call, and its good items are logged and applied as one command,
        durable before the next chunk is read. When the stream breaks off (client cancel,
        network), every chunk committed before stays and nothing of the others is applied.
        The database is pinned at the first item: if it is deleted or re-created during the
        stream, the stream fails with DATABASE_REPLACED. ``should_continue`` is asked before each
        chunk is written: grpc may end a cancelled stream's iterator as if the client had
        finished it, and the partial chunk it read must not be applied then.
        """
        check_database_name(database)
        result = BulkResult()
        stream: Iterator[BulkItem] = iter(items)
        pinned = self.catalog.get(database)
        while chunk := list(islice(stream, BULK_CHUNK)):
            if result.received + len(chunk) > self.limits.max_stream_items:
                raise LookalikeError(
                    ErrorKind.RESOURCE_EXHAUSTED, "TOO_MANY_ITEMS",
                    f"a stream may carry at most {self.limits.max_stream_items} items (--max-stream-items); the "
                    f"first {result.succeeded} registered items stay; send the rest in a new stream",
                )  # fmt: skip
            base = result.received
            result.received += len(chunk)
            vectors: dict[int, np.ndarray] = {}
            errors: dict[int, LookalikeError] = {}
            to_embed: list[int] = []
            for i, item in enumerate(chunk):
                try:
                    if item.database and item.database != database:
                        raise invalid(
                            "DATABASE_MISMATCH",
                            f"item names database {item.database!r} but the stream is for {database!r}; "
                            "use one stream per database",
                        )
                    check_group_id(item.group_id)
                    check_request_id(item.request_id)
                    check_attributes(item.attributes)
                    if item.intra_id is not None:
                        check_intra_id(item.intra_id)
                    if item.vector is not None:
                        vectors[i] = check_vector(item.vector, pinned.dimension)
                    elif item.image is None:
                        raise invalid("IMAGE_MISSING", "send an image (encoded bytes) or a vector to register")
                    else:
                        to_embed.append(i)
                except LookalikeError as err:
                    errors[i] = err
            prepared = self.embedder.prepare_many([chunk[i].image or b"" for i in to_embed], field="image")
            ok = [(i, p) for i, p in zip(to_embed, prepared, strict=True) if not isinstance(p, LookalikeError)]
            errors.update((i, p) for i, p in zip(to_embed, prepared, strict=True) if isinstance(p, LookalikeError))
            if ok:
                for (i, _), vec in zip(ok, self.embedder.embed_prepared([p for _, p in ok]), strict=True):
                    vectors[i] = vec
            good = [i for i in range(len(chunk)) if i not in errors]
            keys: dict[int, Key] = {}
            if good:
                results = self.catalog.set_images(
                    database,
                    [(chunk[i].group_id, chunk[i].intra_id, chunk[i].request_id, chunk[i].attributes) for i in good],
                    np.stack([vectors[i] for i in good]),
                    expect=pinned,
                    should_continue=should_continue,
                )
                keys = {i: r.key for i, r in zip(good, results, strict=True)}
            for i, item in enumerate(chunk):
                if i in keys:
                    result.add_key(keys[i])
                else:
                    err = errors[i]
                    ref = item.client_ref[:MAX_CLIENT_REF_ECHO]
                    result.add_failure(BulkFailure(base + i, ref, err.reason, err.message))
        if result.received == 0:
            raise invalid("STREAM_EMPTY", "the stream carried no items; send at least one")
        return result

    # -- search ----------------------------------------------------------------------------
    def search(
        self,
        database: str,
        query: Query,
        *,
        top_k: int = 0,
        one_per_group: bool = False,
        min_score: float | None = None,
        where: dict[str, str] | None = None,
        group_prefix: str = "",
        with_attributes: bool = True,
    ) -> tuple[list[Hit], int, str]:
        """Top-k by image, vector or registered image; ``where`` filters on attributes, inside the scan.

        Returns (hits best first, images compared, the index that answered: "exact" or "hnsw").
        """
        db = self.catalog.get(database)
        if where:
            check_attributes(where)
        max_top_k = self.limits.max_top_k
        if top_k < 0 or top_k > max_top_k:
            raise invalid("TOP_K_INVALID", f"top_k {top_k} is out of range; use 1-{max_top_k} (0 = {DEFAULT_TOP_K})")
        top_k = top_k or DEFAULT_TOP_K
        if min_score is not None and not (np.isfinite(min_score) and -1.0 <= min_score <= 1.0):
            raise invalid("MIN_SCORE_INVALID", f"min_score {min_score} must be a number in [-1, 1]")
        exclude = None
        if query.registered is not None:
            group_id, intra_id = query.registered
            vec = db.get(group_id, intra_id).vector
            exclude = query.registered
        elif query.vector is not None:
            vec = check_vector(query.vector, db.dimension)
        elif query.image is not None:
            vec = self.embedder.embed([query.image], field="image")[0]
        else:
            raise invalid("QUERY_MISSING", "set one of image, vector or registered as the query")
        return db.search_tier(
            vec, top_k, one_per_group=one_per_group, min_score=min_score, exclude=exclude, where=where,
            group_prefix=group_prefix, with_attributes=with_attributes,
        )  # fmt: skip
