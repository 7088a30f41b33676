"""DatabaseService: databases, registered images, streaming bulk registration."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator

import grpc
from lookalike.server.core.errors import invalid
from lookalike.server.core.service import BULK_CHUNK, BulkItem, DatabaseHandle, DuplicateSpec, LookalikeService
from lookalike.server.core.validation import check_database_name
from lookalike.server.transport import convert
from lookalike.server.transport.errors import grpc_errors
from lookalike.server.transport.operation_servicer import operation
from lookalike.v1 import database_service_pb2 as pb
from lookalike.v1 import database_service_pb2_grpc as pb_grpc
from lookalike.v1 import reindex_pb2 as reindex_pb
from lookalike.v1 import types_pb2

log = logging.getLogger(__name__)

# grpc ends a stream's request iterator the same way for a client that finished and one that
# cancelled (the cancellation is noted a moment later). Before a final partial chunk is applied,
# the stream waits this long for a cancellation to show, so a cancelled upload's partial chunk
# is never written. Full chunks need no wait: they are applied before the stream is read on.
END_OF_STREAM_GRACE_S = 0.02  # a few of Python's 5 ms thread switches


def _content(request: pb.SetImageRequest | pb.BulkSetImagesRequest) -> tuple[bytes | None, list[float] | None]:
    which = request.WhichOneof("content")
    if which == "image":
        return request.image.content, None
    if which == "vector":
        return None, list(request.vector.values)
    return None, None


def _duplicates(request: pb.SetImageRequest | pb.BulkSetImagesRequest) -> DuplicateSpec | None:
    """The duplicate check a write asked for, or None (no check)."""
    if not request.HasField("duplicates"):
        return None
    d = request.duplicates
    policy = pb.DuplicatePolicy.Name(d.if_duplicate).removeprefix("DUPLICATE_POLICY_")
    return DuplicateSpec("ALLOW" if policy == "UNSPECIFIED" else policy, d.tier,
                         d.threshold if d.HasField("threshold") else None)  # fmt: skip


class DatabaseServicer(pb_grpc.DatabaseServiceServicer):
    def __init__(self, service: LookalikeService) -> None:
        self._service = service

    def _db(self, db: DatabaseHandle) -> pb.Database:
        """A database with the name of its loaded model (none: not loaded) and its running reindex, if any."""
        return convert.database(db, self._service.bound_model(db), self._service.reindex_of(db.name))

    @grpc_errors
    def CreateDatabase(
        self, request: pb.CreateDatabaseRequest, context: grpc.ServicerContext
    ) -> pb.CreateDatabaseResponse:
        return pb.CreateDatabaseResponse(
            database=self._db(self._service.create_database(request.name, request.storage, request.keep, request.model))
        )

    @grpc_errors
    def GetDatabase(self, request: pb.GetDatabaseRequest, context: grpc.ServicerContext) -> pb.GetDatabaseResponse:
        return pb.GetDatabaseResponse(database=self._db(self._service.get_database(request.name)))

    @grpc_errors
    def ListDatabases(
        self, request: pb.ListDatabasesRequest, context: grpc.ServicerContext
    ) -> pb.ListDatabasesResponse:
        page, token = self._service.list_databases(request.page_size, request.page_token)
        return pb.ListDatabasesResponse(databases=[self._db(db) for db in page], next_page_token=token)

    @grpc_errors
    def DeleteDatabase(
        self, request: pb.DeleteDatabaseRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDatabaseResponse:
        self._service.delete_database(request.name)
        return pb.DeleteDatabaseResponse()

    @grpc_errors
    def SetImage(self, request: pb.SetImageRequest, context: grpc.ServicerContext) -> pb.SetImageResponse:
        image, vector = _content(request)
        intra_id = request.intra_id if request.HasField("intra_id") else None
        result = self._service.set_image(
            request.database,
            request.group_id,
            intra_id,
            image,
            vector,
            request_id=request.request_id,
            attributes=dict(request.attributes),
            should_continue=context.is_active,
            duplicates=_duplicates(request),
        )
        (group_id, intra) = result.key
        skipped = result.duplicate_score is not None
        return pb.SetImageResponse(key=types_pb2.ImageKey(group_id=group_id, intra_id=intra),
                                   replaced=result.replaced, replayed=result.replayed, skipped_duplicate=skipped,
                                   duplicate_score=result.duplicate_score or 0.0)  # fmt: skip

    @grpc_errors
    def BulkSetImages(
        self, request_iterator: Iterator[pb.BulkSetImagesRequest], context: grpc.ServicerContext
    ) -> pb.BulkSetImagesResponse:
        first = next(request_iterator, None)
        if first is None:
            raise invalid("STREAM_EMPTY", "the stream carried no items; send at least one")
        database = check_database_name(first.database)

        def items() -> Iterator[BulkItem]:
            count = 0
            for item in itertools.chain([first], request_iterator):
                count += 1
                image, vector = _content(item)
                yield BulkItem(
                    group_id=item.group_id,
                    intra_id=item.intra_id if item.HasField("intra_id") else None,
                    image=image,
                    vector=vector,
                    client_ref=item.client_ref,
                    database=item.database,
                    request_id=item.request_id,
                    attributes=dict(item.attributes) or None,
                    duplicates=_duplicates(item),
                )
            if count % BULK_CHUNK:  # a partial chunk follows: was this end a cancellation?
                deadline = time.monotonic() + END_OF_STREAM_GRACE_S
                while context.is_active() and time.monotonic() < deadline:
                    time.sleep(0.002)

        try:
            result = self._service.bulk_set(database, items(), should_continue=context.is_active)
        except grpc.RpcError:  # the client went away: committed chunks stay (see the proto)
            log.info("BulkSetImages stream for %r ended by the client before its summary", database)
            context.abort(grpc.StatusCode.CANCELLED, "the stream was cancelled; chunks committed before it stay")
        return pb.BulkSetImagesResponse(
            received_count=result.received,
            succeeded_count=result.succeeded,
            replayed_count=result.replayed,
            failed_count=result.failed,
            failures=[
                pb.BulkSetFailure(index=f.index, client_ref=f.client_ref, reason=f.reason, message=f.message)
                for f in result.failures
            ],
            keys=[types_pb2.ImageKey(group_id=g, intra_id=i) for g, i in result.keys],
            failures_truncated=result.failures_truncated,
            keys_truncated=result.keys_truncated,
            skipped_duplicate_count=result.skipped_count,
            skipped_duplicates=[
                pb.BulkSkippedDuplicate(
                    index=s.index,
                    client_ref=s.client_ref,
                    score=s.score,
                    existing=types_pb2.ImageKey(group_id=s.existing[0], intra_id=s.existing[1]),
                )
                for s in result.skipped
            ],  # fmt: skip
        )

    @grpc_errors
    def GetImage(self, request: pb.GetImageRequest, context: grpc.ServicerContext) -> pb.GetImageResponse:
        entry = self._service.get_image(request.database, request.key.group_id, request.key.intra_id)
        image = convert.registered_image(entry, include_vector=request.include_vector)
        if request.view == pb.IMAGE_VIEW_UNSPECIFIED:
            return pb.GetImageResponse(image=image)
        view = pb.ImageView.Name(request.view).removeprefix("IMAGE_VIEW_").lower()
        kept = self._service.kept_image(request.database, request.key.group_id, request.key.intra_id, view)
        return pb.GetImageResponse(image=image, image_data=kept.data, media_type=kept.media_type,
                                   image_digest=kept.digest)  # fmt: skip

    @grpc_errors
    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> pb.ListImagesResponse:
        entries, token = self._service.list_images(
            request.database, request.group_id or None, request.page_size, request.page_token
        )
        return pb.ListImagesResponse(
            images=[convert.registered_image(e, include_vector=False) for e in entries], next_page_token=token
        )

    @grpc_errors
    def DeleteImage(self, request: pb.DeleteImageRequest, context: grpc.ServicerContext) -> pb.DeleteImageResponse:
        self._service.delete_image(request.database, request.key.group_id, request.key.intra_id)
        return pb.DeleteImageResponse()

    @grpc_errors
    def DeleteGroup(self, request: pb.DeleteGroupRequest, context: grpc.ServicerContext) -> pb.DeleteGroupResponse:
        return pb.DeleteGroupResponse(deleted_count=self._service.delete_group(request.database, request.group_id))

    @grpc_errors
    def SnapshotDatabase(
        self, request: pb.SnapshotDatabaseRequest, context: grpc.ServicerContext
    ) -> pb.SnapshotDatabaseResponse:
        info = self._service.snapshot_database(request.name)
        return pb.SnapshotDatabaseResponse(
            snapshot_time=convert.timestamp(info.time), size_bytes=info.size_bytes, image_count=info.image_count
        )

    @grpc_errors
    def ExportDatabase(
        self, request: pb.ExportDatabaseRequest, context: grpc.ServicerContext
    ) -> pb.ExportDatabaseResponse:
        info = self._service.export_database(request.name, request.destination)
        return pb.ExportDatabaseResponse(
            destination=request.destination, size_bytes=info.size_bytes, image_count=info.image_count
        )

    @grpc_errors
    def ReindexDatabase(
        self, request: reindex_pb.ReindexDatabaseRequest, context: grpc.ServicerContext
    ) -> pb.ReindexDatabaseResponse:
        op = self._service.reindex_database(request.name, request.model, allow_missing=request.allow_missing,
                                            sample_queries=request.sample_queries)  # fmt: skip
        return pb.ReindexDatabaseResponse(operation=operation(op))

    @grpc_errors
    def RollbackDatabase(
        self, request: pb.RollbackDatabaseRequest, context: grpc.ServicerContext
    ) -> pb.RollbackDatabaseResponse:
        now, previous = self._service.rollback_database(request.name)
        return pb.RollbackDatabaseResponse(database=self._db(now), previous=self._db(previous))

    @grpc_errors
    def ImportDatabase(
        self, request: pb.ImportDatabaseRequest, context: grpc.ServicerContext
    ) -> pb.ImportDatabaseResponse:
        db = self._service.import_database(request.name, request.source)
        return pb.ImportDatabaseResponse(database=self._db(db))
