"""The one door into the core: every operation of every wire is one method here, validated here once.

Transports (the gRPC servicers, the PAI-compatible HTTP gateway, the CLI through gRPC)
translate their wire messages into these calls and never reach past them: no transport
imports a backend or touches ``catalog``. So the same mistake gets the same code, reason and
message on every wire, and a fix to a rule lands in one place.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
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
    describe_model,
    group_not_found,
    read_export_for,
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
from lookalike.server.core.dedup import tiers
from lookalike.server.core.dedup.finder import KIND, DedupSettings, DuplicateFinder
from lookalike.server.core.embedding.embedder import Embedder
from lookalike.server.core.embedding.model_identity import model_identity
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid
from lookalike.server.core.locations import Boundaries, oss_failure, oss_not_configured
from lookalike.server.core.operations import Operation, Operations
from lookalike.server.core.paging import decode_token, encode_token, page_size
from lookalike.server.core.validation import (
    LOAD_PREFIX,
    check_attributes,
    check_database_name,
    check_group_id,
    check_group_prefix,
    check_intra_id,
    check_vector,
)

from lookalike.modelfile import preprocessing_identity

__all__ = ["BULK_CHUNK", "BulkItem", "BulkResult", "DatabaseHandle", "DuplicateSpec", "Entry", "Hit", "Key", "Limits",
           "LookalikeService", "Query", "SnapshotInfo"]  # fmt: skip


class LookalikeService:
    """Matching, embedding, and every database operation, on whichever backend holds the databases."""

    def __init__(
        self,
        embedder: Embedder,
        backend: Callable[[int, dict[str, Any]], IndexBackend],
        limits: Limits | None = None,
        *,
        oss: Any = None,
        boundaries: Boundaries | None = None,
        operations_root: Path | None = None,
        dedup: DedupSettings | None = None,
        max_operations: int = defaults.MAX_OPERATIONS,
    ) -> None:
        """``backend`` builds the index backend from (dimension, model identity); ``oss`` reads oss:// locations;
        ``boundaries`` says where a request may read, write and connect (none given: no location is allowed);
        ``operations_root`` keeps long-running operations (none: a temporary folder, no resume)."""
        self.boundaries = boundaries or Boundaries()
        self.embedder = embedder
        self.limits = limits or Limits()
        self.model = model_identity(embedder.module, embedder.meta)
        self.catalog: IndexBackend = backend(embedder.dimension, self.model)
        self.oss = oss
        self.duplicates = DuplicateFinder(self.catalog.get, self.model_tiers, dedup)
        self.operations = Operations(operations_root, {KIND: self.duplicates.run}, max_operations)
        self.duplicates.operations = self.operations

    # -- life ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once the databases are loaded (or the index backend answers)."""
        return self.catalog.ready.is_set()

    @property
    def model_name(self) -> str:
        return self.embedder.model_name

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def recover(self) -> None:
        """Load the databases (the built-in store drops a load a crash interrupted; the live database never
        changed), then resume the operations that were running."""
        self.catalog.recover()
        self.operations.recover()

    def checkpoint(self) -> SnapshotInfo:
        return self.catalog.checkpoint()

    def close(self, *, snapshot: bool = True) -> None:
        self.operations.close()
        self.catalog.close(snapshot=snapshot)
        self.embedder.close()

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
    def create_database(self, name: str, storage: str = "") -> DatabaseHandle:
        return self.catalog.create(check_database_name(name), storage)

    def get_database(self, name: str) -> DatabaseHandle:
        """A database's description; one of another model is described too (``check_usable`` says why not served)."""
        return self.catalog.get(check_database_name(name), usable=False)

    def all_databases(self) -> list[DatabaseHandle]:
        return [db for db in self.catalog.list() if not db.name.startswith(LOAD_PREFIX)]

    def list_databases(self, size: int, token: str) -> tuple[list[DatabaseHandle], str]:
        size = page_size(size)
        after = decode_token(token)
        if after is not None and not isinstance(after, str):
            raise invalid("PAGE_TOKEN_INVALID", "page_token is not one this server issued")
        dbs = [db for db in self.all_databases() if after is None or db.name > after]
        page = dbs[:size]
        return page, (encode_token(page[-1].name) if len(dbs) > size else "")

    def delete_database(self, name: str) -> None:
        self.catalog.delete(check_database_name(name))

    def clear_database(self, name: str) -> int:
        """Removes every image, keeps the database; returns how many were removed."""
        return self.catalog.clear(check_database_name(name))

    def snapshot_database(self, name: str) -> SnapshotInfo:
        return self.catalog.snapshot_database(check_database_name(name))

    # -- where a request may read and write (server/core/locations.py) ----------------------
    def location(self, location: str, field: str, *, oss: Any = None, create: bool = False) -> str:
        """A local location under the export root (as an absolute path) or an allowed ``oss://`` prefix."""
        remote = isinstance(location, str) and location.startswith("oss://")
        if remote and not getattr(oss or self.oss, "configured", False):
            raise oss_not_configured(field)
        return self.boundaries.location(location, field, create=create and not remote)

    def check_endpoint(self, endpoint: str, field: str) -> str:
        """An OSS endpoint a request names, if the operator allowed it (its normalised URL)."""
        return self.boundaries.check_endpoint(endpoint, field)

    def read_oss(self, ref: str, field: str, *, oss: Any = None, max_bytes: int | None = None) -> bytes:
        """An ``oss://`` object (an image, a list) under an allowed prefix; at most ``max_bytes`` (default: an
        image's largest)."""
        client = oss or self.oss
        if not getattr(client, "configured", False):
            raise oss_not_configured(field)
        self.boundaries.oss_object(ref, field)
        limit = self.embedder.max_image_bytes if max_bytes is None else max_bytes
        try:
            data = client.read(ref, (0, limit))  # one byte over the limit tells a larger object
        except FileNotFoundError:
            raise invalid("IMAGE_NOT_FOUND", f"{field}: the object does not exist") from None
        except (OSError, ValueError) as exc:
            raise oss_failure(exc, field) from None
        if len(data) > limit:
            raise invalid("OBJECT_TOO_LARGE", f"{field} is over {limit} bytes")
        return data

    def export_database(self, name: str, destination: str, *, oss: Any = None) -> SnapshotInfo:
        """``oss``: the client for oss:// locations when not the server's own (PAI ``init``)."""
        check_database_name(name)
        self.catalog.get(name, usable=False)  # no folder is made for a database that is not there
        return self.catalog.export(name, self.location(destination, "destination", oss=oss, create=True),
                                   oss or self.oss)  # fmt: skip

    def import_database(self, name: str, source: str, *, oss: Any = None) -> DatabaseHandle:
        """A new database from an export; an existing name is refused (``load`` replaces one)."""
        check_database_name(name)
        exported = read_export_for(self.location(source, "source", oss=oss), oss or self.oss, self.model,
                                   self.dimension)  # fmt: skip
        return self.catalog.import_(name, exported)

    def load_database(self, name: str, source: str, *, oss: Any = None) -> DatabaseHandle:
        """Replace ``name`` with an export, atomically: the live database changes only if the whole load worked.

        The export is read and verified (checksums, model) first, imported under a temporary
        name, then swapped in with one logged step. Any failure before the swap leaves the live
        database exactly as it was and removes the partial copy.
        """
        check_database_name(name)
        exported = read_export_for(self.location(source, "source", oss=oss), oss or self.oss, self.model,
                                   self.dimension)  # fmt: skip
        staging = f"{LOAD_PREFIX}{secrets.token_hex(4)}-{name}"
        try:
            self.catalog.import_(staging, exported)
            loaded = self.catalog.get(staging, usable=False)
            if loaded.size != exported.size:
                raise LookalikeError(
                    ErrorKind.INTERNAL, "LOAD_INCOMPLETE",
                    f"the load read {exported.size} images but stored {loaded.size}; {name!r} was not changed",
                )  # fmt: skip
            return self.catalog.replace(name, staging)
        except BaseException:
            try:
                self.catalog.delete(staging)
            except LookalikeError:
                pass  # never created, or already swapped in
            raise

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

    def delete_image(self, database: str, group_id: str, intra_id: int) -> None:
        check_database_name(database)
        check_group_id(group_id)
        check_intra_id(intra_id)
        self.catalog.delete_image(database, group_id, intra_id)

    def delete_group(self, database: str, group_id: str) -> int:
        check_database_name(database)
        check_group_id(group_id)
        return self.catalog.delete_group(database, group_id)

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
        duplicates: DuplicateSpec | None = None,
    ) -> SetResult:
        """Upsert one image; ``duplicates`` SKIP answers with a stored duplicate's key (``duplicate_score`` set)."""
        check_database_name(database)
        db = self.catalog.get(database)
        check_group_id(group_id)
        check_request_id(request_id)
        attributes = check_attributes(attributes)
        if intra_id is not None:
            check_intra_id(intra_id)
        check = self.duplicate_check(duplicates)
        vec = self.vector_for(db.dimension, image, vector)  # validate everything before logging anything
        (result,) = self.catalog.set_images(
            database, [set_request(group_id, intra_id, request_id, attributes, image, vector)], vec[np.newaxis],
            should_continue=should_continue, duplicates=[check] if check else None,
        )  # fmt: skip
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
    ) -> tuple[list[Hit], int, str]:
        """Top-k by image, vector or registered image; ``where`` filters on attributes, inside the scan;
        ``min_tier`` drops hits below the model's calibrated tier (with ``min_score``, the stricter applies).

        Returns (hits best first, images compared, the index that answered: "exact" or "hnsw").
        """
        check_database_name(database)
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
            floor = tiers.resolve(*self.model_tiers(), min_tier, None)[0]
            min_score = floor if min_score is None else max(min_score, floor)
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

    # -- duplicates, models, operations (core/dedup/, core/operations.py) ---------------------
    def model_tiers(self) -> tuple[dict[str, float] | None, str]:
        """The model's calibrated similarity tiers (None when its file has none) and its name."""
        return getattr(self.embedder.meta, "tiers", None), self.model_name

    def duplicate_check(self, spec: DuplicateSpec | None) -> DuplicateCheck | None:
        """A write's duplicate check as the backends take it; None for ALLOW."""
        if spec is None or spec.if_duplicate in ("", "ALLOW"):
            return None
        if spec.if_duplicate not in ("SKIP", "REJECT"):
            raise invalid("DUPLICATE_POLICY_INVALID", f"if_duplicate {spec.if_duplicate!r}: use ALLOW, SKIP or REJECT")
        threshold, _ = tiers.resolve(*self.model_tiers(), spec.tier, spec.threshold)
        return DuplicateCheck(threshold, reject=spec.if_duplicate == "REJECT")

    def find_duplicates(self, database: str, **options: Any) -> Operation:
        """Start a FindDuplicates operation (options: tier, threshold, no_chaining, keeper, method)."""
        request = self.duplicates.request(database, **options)
        return self.operations.start(KIND, database, request)

    def duplicate_clusters(self, operation: str, size: int, token: str) -> tuple[list[dict[str, Any]], str, int]:
        return self.duplicates.clusters(operation, size, token)

    def list_models(self) -> list[dict[str, Any]]:
        """The loaded model: name, identity, dimension, preprocessing, tiers, and the databases holding its vectors."""
        meta = self.embedder.meta
        calibration = getattr(meta, "calibration", None)
        databases = [db.name for db in self.all_databases() if db.model == self.model]
        preprocessing = {**preprocessing_identity(meta), "precision": meta.precision}
        return [{"name": self.model_name, "identity": describe_model(self.model), "dimension": self.dimension,
                 "preprocessing": preprocessing, "tiers": self.model_tiers()[0], "calibration": calibration,
                 "databases": databases, "default": True}]  # fmt: skip
