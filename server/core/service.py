"""The one door into the core: every operation of every wire is one method here, validated here once.

Transports (the gRPC servicers, the PAI-compatible HTTP gateway, the CLI through gRPC)
translate their wire messages into these calls and never reach past them: no transport
imports a backend or touches ``catalog``. So the same mistake gets the same code, reason and
message on every wire, and a fix to a rule lands in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from lookalike.server import defaults
from lookalike.server.core.backends.api import (
    DatabaseHandle,
    Entry,
    Hit,
    IndexBackend,
    Key,
    SetResult,
    SnapshotInfo,
    group_not_found,
)
from lookalike.server.core.backends.duplicates import DuplicateCheck
from lookalike.server.core.calls import (
    BULK_CHUNK,
    DEFAULT_TOP_K,
    BulkItem,
    BulkResult,
    DuplicateSpec,
    Limits,
    Query,
    check_request_id,
    set_request,
    similarity,
)
from lookalike.server.core.crop import Crop, check_crop
from lookalike.server.core.dedup import tiers
from lookalike.server.core.dedup.finder import KIND, DedupSettings, DuplicateFinder
from lookalike.server.core.embedding.embedder import Embedder
from lookalike.server.core.embedding.models import ModelRegistry, valid_model_name
from lookalike.server.core.embedding.thumbnails import make_thumbnail
from lookalike.server.core.errors import LookalikeError, invalid
from lookalike.server.core.keeping import Keeper, KeptImage, check_keep
from lookalike.server.core.locations import Boundaries
from lookalike.server.core.model_calls import ModelCalls
from lookalike.server.core.operations import Operation, Operations
from lookalike.server.core.paging import decode_token, encode_token, page_size
from lookalike.server.core.reindex import KIND as REINDEX
from lookalike.server.core.reindex import Reindexer
from lookalike.server.core.transfers import Transfers
from lookalike.server.core.validation import (
    INTERNAL_PREFIX,
    check_attributes,
    check_database_name,
    check_group_id,
    check_group_prefix,
    check_intra_id,
    check_new_database_name,
    check_vector,
)
from lookalike.server.storage.image_store import ImageStore

__all__ = ["BULK_CHUNK", "BulkItem", "BulkResult", "Crop", "DatabaseHandle", "DuplicateSpec", "Entry", "Hit", "Key",
           "Limits", "LookalikeService", "Query", "SnapshotInfo"]  # fmt: skip

CropLike = Crop | Sequence[float]  # a Crop, or (x, y, width, height) as fractions of the upright image


def cropped(crop: Crop | None, field: str = "") -> dict[str, Any]:
    """The embedder's crop keywords: none without a crop, so an uncropped call is the call it always was."""
    if crop is None:
        return {}
    return {"crop": crop, "crop_field": field} if field else {"crop": crop}


class LookalikeService(Transfers, ModelCalls):
    """Matching, embedding, and every database operation, on whichever backend holds the databases."""

    def __init__(
        self,
        models: ModelRegistry | Embedder,
        backend: Callable[[int, dict[str, Any]], IndexBackend],
        limits: Limits | None = None,
        *,
        oss: Any = None,
        boundaries: Boundaries | None = None,
        operations_root: Path | None = None,
        dedup: DedupSettings | None = None,
        max_operations: int = defaults.MAX_OPERATIONS,
        operation_retention_s: float = defaults.OPERATION_RETENTION_S,
        images: ImageStore | None = None,
        keep: str = defaults.KEEP,
    ) -> None:
        """``models``: the loaded models (or one embedder); ``backend`` builds the index backend from the default
        model's (dimension, identity); ``oss`` reads oss:// locations;
        ``boundaries`` says where a request may read, write and connect (none given: no location is allowed);
        ``operations_root`` keeps long-running operations (none: a temporary folder, no resume)."""
        self.boundaries = boundaries or Boundaries()
        if not isinstance(models, ModelRegistry):
            name = models.model_name if valid_model_name(models.model_name) else "default"
            models = ModelRegistry([(name, models)])
        self.models = models
        self.embedder = embedder = models.get()  # the default model
        self.limits = limits or Limits()
        self.model = models.identity()
        self.catalog: IndexBackend = backend(embedder.dimension, self.model)
        self.catalog.serve_models([(models.identity(n), models.get(n).dimension) for n in self.model_names()])
        self.oss = oss
        self.duplicates = DuplicateFinder(self.catalog.get, self.model_tiers, dedup)
        self.reindexer = Reindexer(self)
        runners = {KIND: self.duplicates.run, REINDEX: self.reindexer.run}
        self.operations = Operations(operations_root, runners, max_operations, retention_s=operation_retention_s)
        self.duplicates.operations = self.operations
        self.keep = check_keep(keep, defaults.KEEP)  # a database created without a keep policy gets this
        thumbnail = partial(make_thumbnail, max_bytes=embedder.max_image_bytes, max_pixels=embedder.max_image_pixels,
                            max_aspect_ratio=embedder.max_aspect_ratio)  # the limits the embedder applied  # fmt: skip
        store = images or getattr(self.catalog, "images", None) or ImageStore(None)
        self.keeper = Keeper(store, embedder.pool, thumbnail)

    # -- life ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once the databases are loaded (or the index backend answers)."""
        return self.catalog.ready.is_set()

    @property
    def model_name(self) -> str:
        return self.embedder.model_name

    def recover(self) -> None:
        """Load the databases (the built-in store drops a load a crash interrupted; the live database never
        changed), then resume the operations that were running."""
        self.catalog.recover()
        self.operations.recover()

    def sweep_images(self, grace_s: float = defaults.KEEP_SWEEP_GRACE_S) -> int:
        """Remove kept blobs no image references and none was written in ``grace_s``; how many. The built-in
        store frees them as images go; on Milvus, replicas sharing the store sweep it now and then."""
        return self.keeper.store.sweep(self.catalog.kept_digests(), grace_s=grace_s)

    def checkpoint(self) -> SnapshotInfo:
        return self.catalog.checkpoint()

    def close(self, *, snapshot: bool = True) -> None:
        self.operations.close()
        self.catalog.close(snapshot=snapshot)
        self.models.close()

    # -- matching --------------------------------------------------------------------------
    def match(
        self, image_a: bytes, image_b: bytes, model: str = "", *, crop_a: CropLike | None = None,
        crop_b: CropLike | None = None,
    ) -> tuple[float, float]:  # fmt: skip
        """(similarity in [0, 1], cosine) of the two images' embeddings by ``model`` ("" = the default);
        ``crop_a`` / ``crop_b``: compare only that region of each image (``core/crop.py``)."""
        box_a, box_b = check_crop(crop_a, "crop_a"), check_crop(crop_b, "crop_b")
        embedder = self.models.get(model)
        a = embedder.prepare(image_a, field="image_a", **cropped(box_a, "crop_a"))
        b = embedder.prepare(image_b, field="image_b", **cropped(box_b, "crop_b"))
        va, vb = embedder.embed_prepared([a, b])
        cosine = float(np.clip(np.dot(va, vb), -1.0, 1.0))
        return similarity(cosine), cosine

    def embed(self, images: Sequence[bytes], model: str = "") -> np.ndarray:
        embedder = self.models.get(model)  # an unknown model is the first error
        if not images:
            raise invalid("IMAGE_MISSING", "send at least one image")
        if len(images) > self.limits.max_embed_images:
            raise invalid(
                "TOO_MANY_IMAGES",
                f"{len(images)} images in one call; send at most {self.limits.max_embed_images} (--max-embed-images)",
            )
        return embedder.embed(images)

    # -- databases -------------------------------------------------------------------------
    def create_database(self, name: str, storage: str = "", keep: str = "", model: str = "") -> DatabaseHandle:
        """``keep``: what it keeps of each image (none, thumbnail, original; "" = the server's ``--keep``);
        ``model``: the loaded model it is bound to ("" = the default)."""
        check_new_database_name(name)
        keep = check_keep(keep, self.keep)
        bound = (self.models.identity(model), self.models.get(model).dimension)
        return self.catalog.create(name, storage, keep, bound)

    def get_database(self, name: str) -> DatabaseHandle:
        """A database's description; one of another model is described too (``check_usable`` says why not served)."""
        return self.catalog.get(check_database_name(name), usable=False)

    def all_databases(self) -> list[DatabaseHandle]:
        return [db for db in self.catalog.list() if not db.name.startswith(INTERNAL_PREFIX)]

    def list_databases(self, size: int, token: str) -> tuple[list[DatabaseHandle], str]:
        size = page_size(size)
        after = decode_token(token)
        if after is not None and not isinstance(after, str):
            raise invalid("PAGE_TOKEN_INVALID", "page_token is not one this server issued")
        dbs = [db for db in self.all_databases() if after is None or db.name > after]
        page = dbs[:size]
        return page, (encode_token(page[-1].name) if len(dbs) > size else "")

    def database_disk_bytes(self, name: str) -> int | None:
        """A database's files at its last snapshot, in bytes (None before its first snapshot, or on Milvus)."""
        return self.catalog.disk_bytes(check_database_name(name))

    def delete_database(self, name: str) -> None:
        check_database_name(name)
        self.reindexer.refuse_while_running(name, "dropped")
        self.catalog.delete(name)

    def clear_database(self, name: str) -> int:
        """Removes every image, keeps the database; returns how many were removed."""
        check_database_name(name)
        mirror = self.reindexer.mirrors.get(name)
        with self.reindexer.gate(mirror):
            count = self.catalog.clear(name)
            self.reindexer.mirror_clear(mirror)
        return count

    def snapshot_database(self, name: str) -> SnapshotInfo:
        return self.catalog.snapshot_database(check_database_name(name))

    def list_images(self, database: str, group_id: str | None, size: int, token: str) -> tuple[list[Entry], str]:
        check_database_name(database)
        if group_id is not None:
            check_group_id(group_id)
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

    def group_images(self, database: str, group_id: str) -> list[Entry]:
        """Every image of a group, however many (read a page at a time); NOT_FOUND for an empty group."""
        check_database_name(database)
        check_group_id(group_id)
        db = self.catalog.get(database)
        out: list[Entry] = []
        after: Key | None = None
        while True:
            page, more = db.list(group_id=group_id, after=after, limit=1000)
            out.extend(page)
            if not more or not page:
                break
            after = (page[-1].group_id, page[-1].intra_id)
        if not out:
            raise group_not_found(database, group_id)
        return out

    def get_image(self, database: str, group_id: str, intra_id: int) -> Entry:
        check_database_name(database)
        check_group_id(group_id)
        check_intra_id(intra_id)
        return self.catalog.get(database).get(group_id, intra_id)

    def kept_image(self, database: str, group_id: str, intra_id: int, view: str,
                   known: Collection[str] = ()) -> KeptImage:  # fmt: skip
        """The bytes a database kept of an image: ``view`` "thumbnail" or "original" (NOT_FOUND when not kept);
        ``known``: digests the caller already holds (``Keeper.read``: then none are read)."""
        entry = self.get_image(database, group_id, intra_id)
        what = f"image group_id={group_id!r} intra_id={intra_id} of database {database!r}"
        return self.keeper.read(entry.attributes, view, what, known)

    def delete_image(self, database: str, group_id: str, intra_id: int) -> None:
        check_database_name(database)
        check_group_id(group_id)
        check_intra_id(intra_id)
        mirror = self.reindexer.mirrors.get(database)
        with self.reindexer.gate(mirror):
            self.catalog.delete_image(database, group_id, intra_id)
            self.reindexer.mirror_delete(mirror, group_id, intra_id)

    def delete_group(self, database: str, group_id: str) -> int:
        check_database_name(database)
        check_group_id(group_id)
        mirror = self.reindexer.mirrors.get(database)
        with self.reindexer.gate(mirror):
            count = self.catalog.delete_group(database, group_id)
            self.reindexer.mirror_delete(mirror, group_id)
        return count

    # -- registration ----------------------------------------------------------------------
    def vector_for(self, db: DatabaseHandle, image: bytes | None, vector: Sequence[float] | None, *,
                   keep: bool = False) -> Any:  # fmt: skip
        """The vector to store in ``db``: the one sent (checked), or the image embedded by the database's model;
        with ``keep``, (vector, the thumbnail its kept copy needs, made from the same decode, or None)."""
        if vector is not None:
            vec = check_vector(vector, db.dimension)
            return (vec, None) if keep else vec
        if image is None:
            raise invalid("IMAGE_MISSING", "send an image (encoded bytes) or a vector to register")
        embedder = self.embedder_of(db)
        also = self.keeper.from_decoded(db.keep) if keep else None
        if also is None:
            vec = embedder.embed([image], field="image")[0]
            return (vec, None) if keep else vec
        array, thumb = embedder.prepare(image, field="image", also=also)
        return embedder.embed_prepared([array])[0], thumb

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
        duplicates: DuplicateSpec | None = None,
    ) -> SetResult:
        """Upsert one image; ``duplicates`` SKIP answers with a stored duplicate's key (``duplicate_score`` set).
        While the database is reindexed the write also goes to the new one (``reindex.py``); a write that waited
        for the switch starts again, embedded by the new model."""
        check_database_name(database)
        check_group_id(group_id)
        check_request_id(request_id)
        attributes = check_attributes(attributes)
        if intra_id is not None:
            check_intra_id(intra_id)
        for attempt in range(2):
            db = self.catalog.get(database)
            check = self.duplicate_check(duplicates, database)
            vec, thumb = self.vector_for(db, image, vector, keep=True)  # validate everything before logging anything
            mirror, shadow = self.reindexer.shadow_vectors(database, [image if vector is None else None])
            with self.keeper.keep(db.keep, [image], [thumb]) as (kept,), self.reindexer.gate(mirror):
                request = set_request(group_id, intra_id, request_id, {**attributes, **kept}, image, vector)
                try:
                    (result,) = self.catalog.set_images(
                        database, [request], vec[np.newaxis], expect=db, should_continue=should_continue,
                        duplicates=[check] if check else None,
                    )  # fmt: skip
                except LookalikeError as err:
                    if attempt == 0 and err.reason == "DATABASE_REPLACED":  # a reindex switched it (or it was
                        continue  # re-created) after this write looked it up: again, with its model
                    raise
                if isinstance(result, SetResult) and not result.replayed and result.duplicate_score is None:
                    self.reindexer.mirror_sets(mirror, [(result.key, request.attributes)], shadow)
            break
        if isinstance(result, LookalikeError):
            raise result
        return result

    def bulk_set(
        self, database: str, items: Iterable[BulkItem], should_continue: Callable[[], bool] | None = None
    ) -> BulkResult:
        """Register a stream of items, a chunk at a time (``core/bulk.py``)."""
        from lookalike.server.core.bulk import bulk_set

        return bulk_set(self, database, items, should_continue)

    def register_list(self, database: str, filelist: str, *, oss: Any = None) -> Any:
        """Register the images an ``oss://`` image list names, streamed in chunks (``core/image_lists.py``)."""
        from lookalike.server.core.image_lists import register_list

        check_database_name(database)
        return register_list(self, database, filelist, oss=oss)

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
        min_tier: str = "",
        crop: CropLike | None = None,
    ) -> tuple[list[Hit], int, str]:
        """Top-k by image, vector or registered image; ``where`` filters on attributes, inside the scan;
        ``min_tier`` drops hits below the model's calibrated tier (with ``min_score``, the stricter applies);
        ``crop``: search with only that region of the query image (``core/crop.py``; image queries only).

        Returns (hits best first, images compared, the index that answered: "exact" or "hnsw").
        """
        check_database_name(database)
        box = check_crop(crop)
        if box is not None and query.image is None and (query.vector is not None or query.registered is not None):
            kind = "a vector" if query.vector is not None else "a registered image"
            raise invalid("CROP_INVALID", f"crop is set on a search by {kind}; only an image query can be cropped: "
                          "send the image, or leave crop out", field="crop")  # fmt: skip
        db = self.catalog.get(database)
        if where:
            check_attributes(where, system=True)
        check_group_prefix(group_prefix)
        max_top_k = self.limits.max_top_k
        if top_k < 0 or top_k > max_top_k:
            raise invalid("TOP_K_INVALID", f"top_k {top_k} is out of range; use 1-{max_top_k} (0 = {DEFAULT_TOP_K})")
        top_k = top_k or DEFAULT_TOP_K
        if min_score is not None and not (np.isfinite(min_score) and -1.0 <= min_score <= 1.0):
            raise invalid("MIN_SCORE_INVALID", f"min_score {min_score} must be a number in [-1, 1]")
        if min_tier:
            floor = tiers.resolve(*self.model_tiers(database), min_tier, None)[0]
            min_score = floor if min_score is None else max(min_score, floor)
        exclude = None
        if query.registered is not None:
            group_id, intra_id = query.registered
            vec = db.get(group_id, intra_id).vector
            exclude = query.registered
        elif query.vector is not None:
            vec = check_vector(query.vector, db.dimension)
        elif query.image is not None:
            vec = self.embedder_of(db).embed([query.image], field="image", **cropped(box))[0]
        else:
            raise invalid("QUERY_MISSING", "set one of image, vector or registered as the query")
        return db.search_tier(
            vec, top_k, one_per_group=one_per_group, min_score=min_score, exclude=exclude, where=where,
            group_prefix=group_prefix, with_attributes=with_attributes,
        )  # fmt: skip

    # -- duplicates, models, operations (core/dedup/, core/operations.py) ---------------------
    def duplicate_check(self, spec: DuplicateSpec | None, database: str = "") -> DuplicateCheck | None:
        """A write's duplicate check as the backends take it; None for ALLOW."""
        if spec is None or spec.if_duplicate in ("", "ALLOW"):
            return None
        if spec.if_duplicate not in ("SKIP", "REJECT"):
            raise invalid("DUPLICATE_POLICY_INVALID", f"if_duplicate {spec.if_duplicate!r}: use ALLOW, SKIP or REJECT")
        threshold, _ = tiers.resolve(*self.model_tiers(database), spec.tier, spec.threshold)
        return DuplicateCheck(threshold, reject=spec.if_duplicate == "REJECT")

    def find_duplicates(self, database: str, **options: Any) -> Operation:
        """Start a FindDuplicates operation (options: tier, threshold, no_chaining, keeper, method)."""
        request = self.duplicates.request(database, **options)
        return self.operations.start(KIND, database, request)

    def duplicate_clusters(self, operation: str, size: int, token: str) -> tuple[list[dict[str, Any]], str, int]:
        return self.duplicates.clusters(operation, size, token)

    def reindex_database(self, name: str, model: str = "", *, allow_missing: bool = False,
                         sample_queries: int = 0) -> Operation:  # fmt: skip
        """Start re-embedding a database with another loaded model (``core/reindex.py``)."""
        return self.reindexer.start(self.reindexer.request(name, model, allow_missing, sample_queries))

    def rollback_database(self, name: str) -> tuple[DatabaseHandle, DatabaseHandle]:
        """Swap NAME and NAME@previous (the copy the last reindex kept): (now NAME, now NAME@previous)."""
        return self.reindexer.rollback(name)

    def reindex_of(self, name: str) -> str:
        """The reindex operation running on a database, or ""."""
        return self.reindexer.operation_of(name)
