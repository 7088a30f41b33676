"""Map core errors to ``google.rpc.Status`` with one ``ErrorInfo`` (AIP-193)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from lookalike.server.core.embedding.cancellation import call_scope
from lookalike.server.core.errors import ErrorKind, LookalikeError

log = logging.getLogger(__name__)
DOMAIN = "lookalike"

_CODES = {
    ErrorKind.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    ErrorKind.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    ErrorKind.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    ErrorKind.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    ErrorKind.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    ErrorKind.UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorKind.INTERNAL: code_pb2.INTERNAL,
}


def to_status(err: LookalikeError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(status_pb2.Status(code=_CODES[err.kind], message=err.message, details=[detail]))


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Turn LookalikeError into its status; anything else into INTERNAL without internals."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            with call_scope() as scope:
                context.add_callback(scope.cancel)  # the call ended (cancel, deadline): drop its queued work
                return method(self, request, context)
        except LookalikeError as err:
            context.abort_with_status(to_status(err))
        except Exception:
            if context.code() is not None:  # abort() already ran
                raise
            log.exception("unexpected error in %s", method.__qualname__)
            context.abort_with_status(
                to_status(LookalikeError(ErrorKind.INTERNAL, "INTERNAL", "internal error; see the server log"))
            )

    return wrapper  # type: ignore[return-value]
