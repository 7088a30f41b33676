"""What every transport needs: the embedder, the databases and the limits, in one place.

Transports (gRPC now, the PAI-compatible HTTP gateway later) translate their wire
messages into these calls, so behaviour and errors are the same on every wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
from lookalike.server.core.database import Database, Hit, Key
from lookalike.server.core.embedder import Embedder
from lookalike.server.core.errors import LookalikeError, invalid
from lookalike.server.core.registry import DatabaseRegistry
from lookalike.server.core.validation import check_group_id, check_intra_id, check_vector

MAX_EMBED_IMAGES = 256
BULK_CHUNK = 32
MAX_TOP_K = 1000
DEFAULT_TOP_K = 10


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


@dataclass
class BulkFailure:
    index: int
    client_ref: str
    reason: str
    message: str


@dataclass
class BulkResult:
    received: int = 0
    keys: list[Key] = field(default_factory=list)
    failures: list[BulkFailure] = field(default_factory=list)


class LookalikeService:
    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.databases = DatabaseRegistry(embedder.dimension)

    # -- matching --------------------------------------------------------------------------
    def match(self, image_a: bytes, image_b: bytes) -> float:
        """Cosine of the two images' embeddings."""
        a = self.embedder.prepare(image_a, field="image_a")
        b = self.embedder.prepare(image_b, field="image_b")
        va, vb = self.embedder.embed_prepared([a, b])
        return float(np.clip(np.dot(va, vb), -1.0, 1.0))

    def embed(self, images: Sequence[bytes]) -> np.ndarray:
        if not images:
            raise invalid("IMAGE_MISSING", "send at least one image")
        if len(images) > MAX_EMBED_IMAGES:
            raise invalid("TOO_MANY_IMAGES", f"{len(images)} images in one call; send at most {MAX_EMBED_IMAGES}")
        return self.embedder.embed(images)

    # -- registration ----------------------------------------------------------------------
    def vector_for(self, db: Database, image: bytes | None, vector: Sequence[float] | None) -> np.ndarray:
        if vector is not None:
            return check_vector(vector, db.dimension)
        if image is None:
            raise invalid("IMAGE_MISSING", "send an image (encoded bytes) or a vector to register")
        return self.embedder.embed([image], field="image")[0]

    def set_image(
        self, database: str, group_id: str, intra_id: int | None, image: bytes | None, vector: Sequence[float] | None
    ) -> tuple[Key, bool]:
        db = self.databases.get(database)
        check_group_id(group_id)
        if intra_id is not None:
            check_intra_id(intra_id)
        vec = self.vector_for(db, image, vector)  # validate everything before touching the database
        return db.set(group_id, intra_id, vec)

    def bulk_set(self, database: str, items: Iterable[BulkItem]) -> BulkResult:
        """Register a stream of items; bad ones are reported, good ones land in stream order.

        Items are taken in chunks so images of one chunk are decoded in parallel and embedded
        in one model call. An unknown (or mid-stream deleted) database fails the whole call.
        """
        result = BulkResult()
        stream: Iterator[BulkItem] = iter(items)
        while chunk := list(islice(stream, BULK_CHUNK)):
            db = self.databases.get(database)
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
                    if item.intra_id is not None:
                        check_intra_id(item.intra_id)
                    if item.vector is not None:
                        vectors[i] = check_vector(item.vector, db.dimension)
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
            for i, item in enumerate(chunk):
                err = errors.get(i)
                if err is None:
                    try:
                        key, _ = db.set(item.group_id, item.intra_id, vectors[i])
                        result.keys.append(key)
                        continue
                    except LookalikeError as exc:
                        err = exc
                result.failures.append(BulkFailure(base + i, item.client_ref, err.reason, err.message))
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
    ) -> tuple[list[Hit], int]:
        db = self.databases.get(database)
        if top_k < 0 or top_k > MAX_TOP_K:
            raise invalid("TOP_K_INVALID", f"top_k {top_k} is out of range; use 1-{MAX_TOP_K} (0 = {DEFAULT_TOP_K})")
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
        return db.search(vec, top_k, one_per_group=one_per_group, min_score=min_score, exclude=exclude)
