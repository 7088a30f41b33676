"""SearchService: top-k by image, vector or registered image."""

from __future__ import annotations

import grpc
from lookalike.server.core.service import LookalikeService, Query
from lookalike.server.transport import convert
from lookalike.server.transport.errors import grpc_errors
from lookalike.v1 import search_service_pb2 as pb
from lookalike.v1 import search_service_pb2_grpc as pb_grpc
from lookalike.v1 import types_pb2


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, service: LookalikeService) -> None:
        self._service = service

    @grpc_errors
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        which = request.WhichOneof("query")
        if which == "image":
            query = Query(image=request.image.content)
        elif which == "vector":
            query = Query(vector=request.vector.values)
        elif which == "registered":
            query = Query(registered=(request.registered.group_id, request.registered.intra_id))
        else:
            query = Query()
        hits, searched, index = self._service.search(
            request.database,
            query,
            top_k=request.top_k,
            one_per_group=request.one_per_group,
            min_score=request.min_score if request.HasField("min_score") else None,
            where=dict(request.filter),
            group_prefix=request.group_id_prefix,
            with_attributes=not request.omit_attributes,
            min_tier=request.min_tier,
            crop=convert.crop(request, "crop"),
        )
        return pb.SearchResponse(
            hits=[
                pb.SearchHit(
                    key=types_pb2.ImageKey(group_id=h.group_id, intra_id=h.intra_id),
                    score=h.score,
                    attributes=h.attributes or {},
                )
                for h in hits
            ],
            searched_count=searched,
            index=index,
        )
