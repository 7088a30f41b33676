"""OperationService: read, wait for, cancel and forget long-running operations (AIP-151)."""

from __future__ import annotations

import grpc
from google.rpc import code_pb2
from lookalike.server.core.dedup.finder import KIND
from lookalike.server.core.operations import Operation
from lookalike.server.core.reindex import KIND as REINDEX
from lookalike.server.core.service import LookalikeService
from lookalike.server.transport import convert
from lookalike.server.transport.errors import grpc_errors
from lookalike.v1 import duplicate_pb2 as dup_pb
from lookalike.v1 import operation_pb2 as op_pb
from lookalike.v1 import operation_service_pb2 as pb
from lookalike.v1 import operation_service_pb2_grpc as pb_grpc
from lookalike.v1 import reindex_pb2 as reindex_pb
from lookalike.v1 import types_pb2


def operation(op: Operation) -> op_pb.Operation:
    """An operation as the wire shows it (the request and result typed by kind)."""
    p = op.progress or {}
    state = op_pb.OperationState.Value(f"OPERATION_STATE_{op.state}")
    msg = op_pb.Operation(
        name=op.name, kind=op.kind, database=op.database, state=state, done=op.done,
        progress=op_pb.OperationProgress(completed=p.get("completed", 0), total=p.get("total", 0),
                                         unit=p.get("unit", ""), fraction=p.get("fraction", 0.0),
                                         eta_seconds=p.get("eta_seconds", 0.0), stage=p.get("stage", "")),
        create_time=convert.timestamp(op.create_time), update_time=convert.timestamp(op.update_time),
        resumed_count=op.resumed,
    )  # fmt: skip
    if op.error:
        code = getattr(code_pb2, op.error.get("kind", "INTERNAL"), code_pb2.INTERNAL)
        msg.error.CopyFrom(op_pb.OperationError(code=code, reason=op.error.get("reason", ""),
                                                message=op.error.get("message", "")))  # fmt: skip
    if op.kind == KIND:
        r = op.request
        request = dup_pb.FindDuplicatesRequest(database=op.database, tier=r.get("tier", ""),
                                               no_chaining=r.get("no_chaining", False), keeper=r.get("keeper", ""),
                                               method=r.get("method", ""))  # fmt: skip
        if "threshold" in r:
            request.threshold = r["threshold"]
        msg.find_duplicates_request.CopyFrom(request)
        if op.result is not None:
            res = op.result
            msg.find_duplicates.CopyFrom(dup_pb.FindDuplicatesResult(
                threshold=res["threshold"], tier=res.get("tier", ""), method=res["method"],
                image_count=res["image_count"], pair_count=res["pair_count"], cluster_count=res["cluster_count"],
                clustered_image_count=res["clustered_image_count"], removable_count=res["removable_count"],
                seconds=res["seconds"], no_chaining=res.get("no_chaining", False),
            ))  # fmt: skip
    if op.kind == REINDEX:
        _reindex(op, msg)
    return msg


def _reindex(op: Operation, msg: op_pb.Operation) -> None:
    r = op.request
    msg.reindex_request.CopyFrom(reindex_pb.ReindexDatabaseRequest(
        name=op.database, model=r.get("model", ""), allow_missing=r.get("allow_missing", False),
        sample_queries=r.get("sample_queries", 0)))  # fmt: skip
    res = op.result
    if res is None:
        return
    missing = [reindex_pb.ReindexMissing(key=types_pb2.ImageKey(group_id=m["key"][0], intra_id=m["key"][1]),
                                         source=m.get("source", ""), reason=m.get("reason", ""))
               for m in res.get("missing", [])]  # fmt: skip
    msg.reindex.CopyFrom(reindex_pb.ReindexResult(
        database=res["database"], previous=res["previous"], model=res["model"], previous_model=res["previous_model"],
        reindexed_count=res["reindexed_count"], concurrent_writes=res["concurrent_writes"],
        missing_count=res["missing_count"], missing=missing, overlap_at_10=res["overlap_at_10"],
        same_nearest_group=res["same_nearest_group"], sampled_queries=res["sampled_queries"],
        switched=res["switched"]))  # fmt: skip


class OperationServicer(pb_grpc.OperationServiceServicer):
    def __init__(self, service: LookalikeService) -> None:
        self._ops = service.operations

    @grpc_errors
    def GetOperation(self, request: pb.GetOperationRequest, context: grpc.ServicerContext) -> pb.GetOperationResponse:
        return pb.GetOperationResponse(operation=operation(self._ops.get(request.name)))

    @grpc_errors
    def ListOperations(
        self, request: pb.ListOperationsRequest, context: grpc.ServicerContext
    ) -> pb.ListOperationsResponse:
        page, token = self._ops.list(request.database, request.page_size, request.page_token)
        return pb.ListOperationsResponse(operations=[operation(o) for o in page], next_page_token=token)

    @grpc_errors
    def CancelOperation(
        self, request: pb.CancelOperationRequest, context: grpc.ServicerContext
    ) -> pb.CancelOperationResponse:
        return pb.CancelOperationResponse(operation=operation(self._ops.cancel(request.name)))

    @grpc_errors
    def DeleteOperation(
        self, request: pb.DeleteOperationRequest, context: grpc.ServicerContext
    ) -> pb.DeleteOperationResponse:
        self._ops.delete(request.name)
        return pb.DeleteOperationResponse()

    @grpc_errors
    def WaitOperation(
        self, request: pb.WaitOperationRequest, context: grpc.ServicerContext
    ) -> pb.WaitOperationResponse:
        return pb.WaitOperationResponse(operation=operation(self._ops.wait(request.name, request.timeout_seconds)))
