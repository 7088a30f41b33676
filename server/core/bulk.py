"""BulkSetImages: a stream of items registered a chunk at a time, bad items reported, good ones in order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from lookalike.server.core.backends.api import SetResult
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
        prepared = service.embedder.prepare_many([chunk[i].image or b"" for i in to_embed], field="image")
        ok = [(i, p) for i, p in zip(to_embed, prepared, strict=True) if not isinstance(p, LookalikeError)]
        errors.update((i, p) for i, p in zip(to_embed, prepared, strict=True) if isinstance(p, LookalikeError))
        if ok:
            for (i, _), vec in zip(ok, service.embedder.embed_prepared([p for _, p in ok]), strict=True):
                vectors[i] = vec
        checks = {}
        for i, item in enumerate(chunk):
            if i not in errors and item.duplicates is not None:
                try:
                    checks[i] = service.duplicate_check(item.duplicates)
                except LookalikeError as err:
                    errors[i] = err
        good = [i for i in range(len(chunk)) if i not in errors]
        keys: dict[int, SetResult] = {}
        if good:
            results = service.catalog.set_images(
                database,
                [set_request(c.group_id, c.intra_id, c.request_id, c.attributes, c.image, c.vector)
                 for c in (chunk[i] for i in good)],
                np.stack([vectors[i] for i in good]),
                expect=pinned,
                should_continue=should_continue,
                duplicates=[checks.get(i) for i in good] if checks else None,
            )  # fmt: skip
            for i, r in zip(good, results, strict=True):
                if isinstance(r, LookalikeError):
                    errors[i] = r
                else:
                    keys[i] = r
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
