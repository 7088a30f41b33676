"""MatchService: compare two images, embed images."""

from __future__ import annotations

import grpc
from lookalike.server.core.service import LookalikeService
from lookalike.server.transport import convert
from lookalike.server.transport.errors import grpc_errors
from lookalike.v1 import match_service_pb2 as pb
from lookalike.v1 import match_service_pb2_grpc as pb_grpc


class MatchServicer(pb_grpc.MatchServiceServicer):
    def __init__(self, service: LookalikeService) -> None:
        self._service = service

    @grpc_errors
    def Match(self, request: pb.MatchRequest, context: grpc.ServicerContext) -> pb.MatchResponse:
        similarity, cosine = self._service.match(
            request.image_a.content, request.image_b.content, request.model,
            crop_a=convert.crop(request, "crop_a"), crop_b=convert.crop(request, "crop_b"),
        )  # fmt: skip
        name, _ = self._service.resolve_model(request.model)
        return pb.MatchResponse(similarity=similarity, cosine=cosine, model=name)

    @grpc_errors
    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        vectors = self._service.embed([img.content for img in request.images], request.model)
        name, dimension = self._service.resolve_model(request.model)
        return pb.EmbedResponse(embeddings=[convert.vector(v) for v in vectors], model=name, dimension=dimension)
