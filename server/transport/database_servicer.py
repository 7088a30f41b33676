"""DatabaseService: databases, registered images, streaming bulk registration."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc
from lookalike.server.core.errors import invalid
from lookalike.server.core.service import BulkItem, LookalikeService
from lookalike.server.core.validation import check_database_name
from lookalike.server.transport import convert
from lookalike.server.transport.errors import grpc_errors
from lookalike.server.transport.paging import decode_token, encode_token, page_size
from lookalike.v1 import database_service_pb2 as pb
from lookalike.v1 import database_service_pb2_grpc as pb_grpc
from lookalike.v1 import types_pb2

MAX_BULK_FAILURES_LISTED = 10_000


def _content(request: pb.SetImageRequest | pb.BulkSetImagesRequest) -> tuple[bytes | None, list[float] | None]:
    which = request.WhichOneof("content")
    if which == "image":
        return request.image.content, None
    if which == "vector":
        return None, list(request.vector.values)
    return None, None


class DatabaseServicer(pb_grpc.DatabaseServiceServicer):
    def __init__(self, service: LookalikeService) -> None:
        self._service = service
        self._dbs = service.databases

    @grpc_errors
    def CreateDatabase(
        self, request: pb.CreateDatabaseRequest, context: grpc.ServicerContext
    ) -> pb.CreateDatabaseResponse:
        return pb.CreateDatabaseResponse(database=convert.database(self._dbs.create(request.name)))

    @grpc_errors
    def GetDatabase(self, request: pb.GetDatabaseRequest, context: grpc.ServicerContext) -> pb.GetDatabaseResponse:
        return pb.GetDatabaseResponse(database=convert.database(self._dbs.get(request.name)))

    @grpc_errors
    def ListDatabases(
        self, request: pb.ListDatabasesRequest, context: grpc.ServicerContext
    ) -> pb.ListDatabasesResponse:
        size = page_size(request.page_size)
        after = decode_token(request.page_token)
        if after is not None and not isinstance(after, str):
            raise invalid("PAGE_TOKEN_INVALID", "page_token is not one this server issued")
        dbs = [db for db in self._dbs.list() if after is None or db.name > after]
        page = dbs[:size]
        token = encode_token(page[-1].name) if len(dbs) > size else ""
        return pb.ListDatabasesResponse(databases=[convert.database(db) for db in page], next_page_token=token)

    @grpc_errors
    def DeleteDatabase(
        self, request: pb.DeleteDatabaseRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDatabaseResponse:
        self._dbs.delete(request.name)
        return pb.DeleteDatabaseResponse()

    @grpc_errors
    def SetImage(self, request: pb.SetImageRequest, context: grpc.ServicerContext) -> pb.SetImageResponse:
        image, vector = _content(request)
        intra_id = request.intra_id if request.HasField("intra_id") else None
        (group_id, intra), replaced = self._service.set_image(
            request.database, request.group_id, intra_id, image, vector
        )
        return pb.SetImageResponse(key=types_pb2.ImageKey(group_id=group_id, intra_id=intra), replaced=replaced)

    @grpc_errors
    def BulkSetImages(
        self, request_iterator: Iterator[pb.BulkSetImagesRequest], context: grpc.ServicerContext
    ) -> pb.BulkSetImagesResponse:
        first = next(request_iterator, None)
        if first is None:
            raise invalid("STREAM_EMPTY", "the stream carried no items; send at least one")
        database = check_database_name(first.database)

        def items() -> Iterator[BulkItem]:
            for item in itertools.chain([first], request_iterator):
                image, vector = _content(item)
                yield BulkItem(
                    group_id=item.group_id,
                    intra_id=item.intra_id if item.HasField("intra_id") else None,
                    image=image,
                    vector=vector,
                    client_ref=item.client_ref,
                    database=item.database,
                )

        result = self._service.bulk_set(database, items())
        return pb.BulkSetImagesResponse(
            received_count=result.received,
            succeeded_count=len(result.keys),
            failed_count=len(result.failures),
            failures=[
                pb.BulkSetFailure(index=f.index, client_ref=f.client_ref, reason=f.reason, message=f.message)
                for f in result.failures[:MAX_BULK_FAILURES_LISTED]
            ],
            keys=[types_pb2.ImageKey(group_id=g, intra_id=i) for g, i in result.keys],
        )

    @grpc_errors
    def GetImage(self, request: pb.GetImageRequest, context: grpc.ServicerContext) -> pb.GetImageResponse:
        entry = self._dbs.get(request.database).get(request.key.group_id, request.key.intra_id)
        return pb.GetImageResponse(image=convert.registered_image(entry, include_vector=request.include_vector))

    @grpc_errors
    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> pb.ListImagesResponse:
        db = self._dbs.get(request.database)
        size = page_size(request.page_size)
        cursor = decode_token(request.page_token)
        after = None
        if cursor is not None:
            if not (
                isinstance(cursor, list)
                and len(cursor) == 2
                and isinstance(cursor[0], str)
                and isinstance(cursor[1], int)
            ):
                raise invalid("PAGE_TOKEN_INVALID", "page_token is not one this server issued")
            after = (cursor[0], cursor[1])
        entries, more = db.list(group_id=request.group_id or None, after=after, limit=size)
        token = encode_token([entries[-1].group_id, entries[-1].intra_id]) if more and entries else ""
        return pb.ListImagesResponse(
            images=[convert.registered_image(e, include_vector=False) for e in entries], next_page_token=token
        )

    @grpc_errors
    def DeleteImage(self, request: pb.DeleteImageRequest, context: grpc.ServicerContext) -> pb.DeleteImageResponse:
        self._dbs.get(request.database).delete(request.key.group_id, request.key.intra_id)
        return pb.DeleteImageResponse()

    @grpc_errors
    def DeleteGroup(self, request: pb.DeleteGroupRequest, context: grpc.ServicerContext) -> pb.DeleteGroupResponse:
        return pb.DeleteGroupResponse(deleted_count=self._dbs.get(request.database).delete_group(request.group_id))
