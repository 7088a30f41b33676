"""DuplicateService: start a FindDuplicates operation; read its clusters a page at a time."""

from __future__ import annotations

from typing import Any

import grpc
from lookalike.server.core.service import LookalikeService
from lookalike.server.transport.errors import grpc_errors
from lookalike.server.transport.operation_servicer import operation
from lookalike.v1 import duplicate_pb2 as dup_pb
from lookalike.v1 import duplicate_service_pb2 as pb
from lookalike.v1 import duplicate_service_pb2_grpc as pb_grpc
from lookalike.v1 import types_pb2


def _key(group_id: str, intra_id: int) -> types_pb2.ImageKey:
    return types_pb2.ImageKey(group_id=group_id, intra_id=intra_id)


def _pair(p: list[Any]) -> dup_pb.ImagePair:
    return dup_pb.ImagePair(a=_key(p[0], p[1]), b=_key(p[2], p[3]), score=p[4])


def cluster(c: dict[str, Any]) -> dup_pb.DuplicateCluster:
    """A cluster of the result file (``core/dedup/finder.py``) as the wire shows it."""
    return dup_pb.DuplicateCluster(
        index=c["index"],
        members=[dup_pb.DuplicateMember(key=_key(g, i), score_to_centre=s, attributes=a)
                 for g, i, s, a in c["members"]],
        centre=_key(*c["centre"]), keeper=_key(*c["keeper"]), keeper_reason=c["keeper_reason"],
        closest=_pair(c["closest"]), farthest=_pair(c["farthest"]), exact_pairs=c["exact_pairs"],
    )  # fmt: skip


class DuplicateServicer(pb_grpc.DuplicateServiceServicer):
    def __init__(self, service: LookalikeService) -> None:
        self._service = service

    @grpc_errors
    def FindDuplicates(
        self, request: dup_pb.FindDuplicatesRequest, context: grpc.ServicerContext
    ) -> pb.FindDuplicatesResponse:
        op = self._service.find_duplicates(
            request.database, tier=request.tier, threshold=request.threshold if request.HasField("threshold") else None,
            no_chaining=request.no_chaining, keeper=request.keeper, method=request.method,
        )  # fmt: skip
        return pb.FindDuplicatesResponse(operation=operation(op))

    @grpc_errors
    def ListDuplicateClusters(
        self, request: pb.ListDuplicateClustersRequest, context: grpc.ServicerContext
    ) -> pb.ListDuplicateClustersResponse:
        page, token, total = self._service.duplicate_clusters(request.operation, request.page_size, request.page_token)
        return pb.ListDuplicateClustersResponse(clusters=[cluster(c) for c in page], next_page_token=token,
                                                total_size=total)  # fmt: skip
