"""BulkSetImages: a stream of items registered a chunk at a time, bad items reported, good ones in order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from lookalike.server.core.backends.api import SetRequest, SetResult
from lookalike.server.core.calls import (
    MAX_CLIENT_REF_ECHO,
    BulkFailure,
    BulkItem,
    BulkResult,
    BulkSkipped,
    check_request_id,
    set_request,
    take_chunk,
)
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid
from lookalike.server.core.validation import (
    check_attributes,
    check_database_name,
    check_group_id,
    check_intra_id,
    check_vector,
)

if TYPE_CHECKING:
    from lookalike.server.core.service import LookalikeService


def bulk_set(
    service: LookalikeService, database: str, items: Iterable[BulkItem],
    should_continue: Callable[[], bool] | None = None,
) -> BulkResult:  # fmt: skip
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
    pinned = service.catalog.get(database)
    while chunk := take_chunk(stream):
        if result.received + len(chunk) > service.limits.max_stream_items:
            raise LookalikeError(
                ErrorKind.RESOURCE_EXHAUSTED, "TOO_MANY_ITEMS",
                f"a stream may carry at most {service.limits.max_stream_items} items (--max-stream-items); the "
                f"first {result.succeeded} registered items stay; send the rest in a new stream",
            )  # fmt: skip
        base = result.received
        result.received += len(chunk)
        try:
            keys, errors = _write_chunk(service, database, pinned, chunk, should_continue)
        except LookalikeError as err:
            if err.reason != "DATABASE_REPLACED" or service.reindexer.switched_from(database) is not pinned:
                raise
            pinned = service.catalog.get(database)  # a reindex switched the name: the chunk again, new model
            keys, errors = _write_chunk(service, database, pinned, chunk, should_continue)
        for i, item in enumerate(chunk):
            if i in keys:
                result.add_key(keys[i].key, replayed=keys[i].replayed)
                if keys[i].duplicate_score is not None:
                    result.add_skipped(BulkSkipped(base + i, item.client_ref[:MAX_CLIENT_REF_ECHO], keys[i].key,
                                                   float(keys[i].duplicate_score)))  # fmt: skip
            else:
                err = errors[i]
                ref = item.client_ref[:MAX_CLIENT_REF_ECHO]
                result.add_failure(BulkFailure(base + i, ref, err.reason, err.message))
    if result.received == 0:
        raise invalid("STREAM_EMPTY", "the stream carried no items; send at least one")
    return result


def _write_chunk(
    service: LookalikeService, database: str, pinned: Any, chunk: list[BulkItem],
    should_continue: Callable[[], bool] | None,
) -> tuple[dict[int, SetResult], dict[int, LookalikeError]]:  # fmt: skip
    """Validate, embed (with the pinned database's model) and write one chunk: (stored by position, errors)."""
    embedder = service.embedder_of(pinned)
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
    also = service.keeper.from_decoded(pinned.keep)  # thumbnails from the same decode as the vectors
    prepared = embedder.prepare_many([chunk[i].image or b"" for i in to_embed], field="image", also=also)
    thumbs: dict[int, bytes | None] = {}
    if also is not None:
        for k, (i, p) in enumerate(zip(to_embed, prepared, strict=True)):
            if not isinstance(p, LookalikeError):
                prepared[k], thumbs[i] = p
    ok = [(i, p) for i, p in zip(to_embed, prepared, strict=True) if not isinstance(p, LookalikeError)]
    errors.update((i, p) for i, p in zip(to_embed, prepared, strict=True) if isinstance(p, LookalikeError))
    if ok:
        for (i, _), vec in zip(ok, embedder.embed_prepared([p for _, p in ok]), strict=True):
            vectors[i] = vec
    checks = {}
    for i, item in enumerate(chunk):
        if i not in errors and item.duplicates is not None:
            try:
                checks[i] = service.duplicate_check(item.duplicates, database)
            except LookalikeError as err:
                errors[i] = err
    good = [i for i in range(len(chunk)) if i not in errors]
    keys: dict[int, SetResult] = {}
    if not good:
        return keys, errors
    images = [chunk[i].image if chunk[i].vector is None else None for i in good]
    mirror, shadow = service.reindexer.shadow_vectors(database, images)
    made = [thumbs.get(i) for i in good]
    with service.keeper.keep(pinned.keep, [chunk[i].image for i in good], made) as kept, \
            service.reindexer.gate(mirror):  # fmt: skip
        items = [chunk[i] for i in good]
        requests = [set_request(c.group_id, c.intra_id, c.request_id, {**(c.attributes or {}), **k}, c.image,
                                c.vector) for c, k in zip(items, kept, strict=True)]  # fmt: skip
        results = service.catalog.set_images(
            database, requests, np.stack([vectors[i] for i in good]), expect=pinned, should_continue=should_continue,
            duplicates=[checks.get(i) for i in good] if checks else None,
        )  # fmt: skip
        service.reindexer.mirror_sets(mirror, *_written(requests, results, shadow))
    for i, r in zip(good, results, strict=True):
        if isinstance(r, LookalikeError):
            errors[i] = r
        else:
            keys[i] = r
    return keys, errors


def _written(requests: list[SetRequest], results: list[Any], vectors: list[Any]) -> tuple[list[Any], list[Any]]:
    """The rows a chunk stored (not replayed, not skipped as duplicates) and their new-model vectors."""
    rows, shadow = [], []
    for request, result, vector in zip(requests, results, vectors, strict=True):
        if isinstance(result, SetResult) and not result.replayed and result.duplicate_score is None:
            rows.append((result.key, request.attributes))
            shadow.append(vector)
    return rows, shadow
