"""Optional shared-token auth: the ``authorization`` header, as PAI-EAS clients send it.

The token is compared in constant time and never logged or echoed. Health checks and
reflection stay open so probes and grpcurl discovery work without the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc
from lookalike.server.core.errors import ErrorKind, LookalikeError
from lookalike.server.transport.errors import to_status

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def token_matches(sent: str | None, token: str) -> bool:
    if sent is None:
        return False
    if sent.lower().startswith("bearer "):
        sent = sent[7:]
    return hmac.compare_digest(sent.strip().encode(), token.encode())


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token
        status = to_status(
            LookalikeError(
                ErrorKind.UNAUTHENTICATED,
                "TOKEN_INVALID",
                "missing or wrong token: send it in the 'authorization' metadata header",
            )
        )

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort_with_status(status)

        def deny_stream(request_iterator: Any, context: grpc.ServicerContext) -> None:
            context.abort_with_status(status)

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_unary_rpc_method_handler(deny_stream)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        if token_matches(sent if isinstance(sent, str) else None, self._token):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.request_streaming:
            return self._deny_stream
        return self._deny_unary
