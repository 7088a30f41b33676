"""Client calls for duplicates, long-running operations and models (a mixin of ``LookalikeClient``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from lookalike.v1 import database_service_pb2 as db_pb
from lookalike.v1 import duplicate_pb2 as dup_pb
from lookalike.v1 import duplicate_service_pb2 as dup_svc
from lookalike.v1 import duplicate_service_pb2_grpc as dup_grpc
from lookalike.v1 import model_service_pb2 as model_pb
from lookalike.v1 import model_service_pb2_grpc as model_grpc
from lookalike.v1 import operation_pb2 as op_pb
from lookalike.v1 import operation_service_pb2 as op_svc
from lookalike.v1 import operation_service_pb2_grpc as op_grpc

POLICIES = {"ALLOW": db_pb.DUPLICATE_POLICY_ALLOW, "SKIP": db_pb.DUPLICATE_POLICY_SKIP,
            "REJECT": db_pb.DUPLICATE_POLICY_REJECT}  # fmt: skip


def duplicate_check(if_duplicate: str, tier: str = "", threshold: float | None = None) -> db_pb.DuplicateCheck | None:
    """The ``duplicates`` field of a write: ``if_duplicate`` "SKIP" or "REJECT" (or "ALLOW": no check)."""
    policy = if_duplicate.upper()
    if policy not in POLICIES:
        raise ValueError(f"if_duplicate {if_duplicate!r}: use ALLOW, SKIP or REJECT")
    if policy == "ALLOW":
        return None
    return db_pb.DuplicateCheck(if_duplicate=POLICIES[policy], tier=tier, threshold=threshold)


def stubs(channel: Any) -> tuple[Any, Any, Any]:
    """(DuplicateService, OperationService, ModelService) stubs on a channel (blocking or asyncio)."""
    return (dup_grpc.DuplicateServiceStub(channel), op_grpc.OperationServiceStub(channel),
            model_grpc.ModelServiceStub(channel))  # fmt: skip


def state_name(state: int) -> str:
    """An OperationState as a person reads it: RUNNING, SUCCEEDED, FAILED, CANCELLED."""
    return op_pb.OperationState.Name(state).removeprefix("OPERATION_STATE_")


class DuplicateCalls:
    """FindDuplicates and its clusters, operations, models; ``_rpc`` wraps them as the other calls."""

    _channel: Any
    _kw: Callable[[], dict[str, Any]]

    def _stubs(self) -> tuple[Any, Any, Any]:
        if not hasattr(self, "_dup_stubs"):
            self._dup_stubs = stubs(self._channel)
        return self._dup_stubs

    def find_duplicates(self, database: str, *, tier: str = "", threshold: float | None = None,
                        no_chaining: bool = False, keeper: str = "", method: str = "") -> op_pb.Operation:  # fmt: skip
        """Start finding every duplicate in ``database``; returns the running operation."""
        req = dup_pb.FindDuplicatesRequest(database=database, tier=tier, threshold=threshold, no_chaining=no_chaining,
                                           keeper=keeper, method=method)  # fmt: skip
        return self._stubs()[0].FindDuplicates(req, **self._kw()).operation

    def duplicate_clusters(self, operation: str, page_size: int = 0) -> Iterator[dup_pb.DuplicateCluster]:
        """Every cluster of a finished FindDuplicates operation, largest first, read a page at a time."""
        token = ""
        while True:
            req = dup_svc.ListDuplicateClustersRequest(operation=operation, page_size=page_size, page_token=token)
            resp = self._stubs()[0].ListDuplicateClusters(req, **self._kw())
            yield from resp.clusters
            token = resp.next_page_token
            if not token:
                return

    def get_operation(self, name: str) -> op_pb.Operation:
        return self._stubs()[1].GetOperation(op_svc.GetOperationRequest(name=name), **self._kw()).operation

    def wait_operation(self, name: str, timeout_seconds: float = 0.0) -> op_pb.Operation:
        """The operation once done, or after ``timeout_seconds`` (0: the server's longest wait, 60 s)."""
        req = op_svc.WaitOperationRequest(name=name, timeout_seconds=timeout_seconds)
        return self._stubs()[1].WaitOperation(req, **self._kw()).operation

    def wait_done(self, name: str, poll: Callable[[op_pb.Operation], None] | None = None,
                  interval: float = 0.5) -> op_pb.Operation:  # fmt: skip
        """Wait however long it takes; ``poll`` sees the operation after each wait (a progress bar)."""
        while True:
            op = self.wait_operation(name, interval)
            if poll is not None:
                poll(op)
            if op.done:
                return op

    def cancel_operation(self, name: str) -> op_pb.Operation:
        return self._stubs()[1].CancelOperation(op_svc.CancelOperationRequest(name=name), **self._kw()).operation

    def delete_operation(self, name: str) -> None:
        self._stubs()[1].DeleteOperation(op_svc.DeleteOperationRequest(name=name), **self._kw())

    def list_operations(self, database: str = "") -> list[op_pb.Operation]:
        out, token = [], ""
        while True:
            req = op_svc.ListOperationsRequest(database=database, page_token=token)
            resp = self._stubs()[1].ListOperations(req, **self._kw())
            out.extend(resp.operations)
            token = resp.next_page_token
            if not token:
                return out

    def list_models(self) -> list[model_pb.Model]:
        return list(self._stubs()[2].ListModels(model_pb.ListModelsRequest(), **self._kw()).models)
