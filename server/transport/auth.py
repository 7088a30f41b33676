"""Optional token auth: the ``authorization`` header, as PAI-EAS clients send it.

Tokens come from ``LOOKALIKE_TOKEN`` and/or ``--token-file`` (one per line, ``#`` comments).
The file is re-read when its modification time or size changes, so a token is rotated by
adding the new one, moving clients over, then removing the old one, without a restart. A
file that cannot be read or parsed keeps the last good token set (and says so in the log).
Tokens are compared in constant time and never logged or echoed. Health checks and
reflection stay open unless ``--no-open-health``, so probes and grpcurl work without a token.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from lookalike.server.core.errors import ErrorKind, LookalikeError
from lookalike.server.transport.errors import to_status

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# The file's metadata is looked at no more often than this (a stat per call would be cheap, but pointless).
RECHECK_S = 0.5


def _strip(sent: str) -> str:
    sent = sent.strip()
    return sent[7:].strip() if sent.lower().startswith("bearer ") else sent


def token_matches(sent: str | None, token: str | TokenSet) -> bool:
    """``sent`` (raw or ``Bearer``) is the token, or one of a ``TokenSet``'s (file tokens included)."""
    if isinstance(token, TokenSet):
        return token.accepts(sent)
    if sent is None:
        return False
    return hmac.compare_digest(_strip(sent).encode(), token.encode())


def read_token_file(path: Path) -> tuple[str, ...]:
    """Tokens of ``path``: one per line, blank lines and ``#`` comments skipped, surrounding space removed."""
    tokens = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if any(c.isspace() for c in line):
            raise ValueError(f"{path} line {number}: a token may not contain spaces (one token per line)")
        tokens.append(line)
    return tuple(tokens)


class TokenSet:
    """The accepted tokens: a fixed one and those of a file that is watched for changes."""

    def __init__(self, token: str | None = None, token_file: Path | None = None) -> None:
        self._fixed = (token,) if token else ()
        self._file = token_file
        self._file_tokens: tuple[str, ...] = ()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if token_file is not None:
            try:
                self._stamp = self._stat()
                self._file_tokens = read_token_file(token_file)
            except (OSError, ValueError) as exc:
                raise ValueError(f"--token-file {token_file}: {exc}") from None
            if not self._file_tokens and not self._fixed:
                raise ValueError(f"--token-file {token_file} holds no token; add one per line")

    @property
    def enabled(self) -> bool:
        return bool(self._fixed) or self._file is not None

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self._file)  # type: ignore[arg-type]
        return st.st_mtime_ns, st.st_size

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < RECHECK_S:
            return
        with self._lock:
            if now - self._checked < RECHECK_S:
                return
            self._checked = now
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return
                tokens = read_token_file(self._file)
            except (OSError, ValueError) as exc:
                log.warning("token file %s not re-read (%s); keeping the %d tokens read before",
                            self._file, exc, len(self._file_tokens))  # fmt: skip
                return
            self._stamp = stamp
            self._file_tokens = tokens
            log.info("token file %s re-read: %d tokens", self._file, len(tokens))

    def tokens(self) -> tuple[str, ...]:
        self._refresh()
        return self._fixed + self._file_tokens

    def accepts(self, sent: str | None) -> bool:
        if sent is None:
            return False
        candidate = _strip(sent).encode()
        ok = False
        for token in self.tokens():  # every token compared, so timing says nothing about which matched
            ok |= hmac.compare_digest(candidate, token.encode())
        return ok


def unauthenticated_status() -> grpc.Status:
    return to_status(
        LookalikeError(
            ErrorKind.UNAUTHENTICATED,
            "TOKEN_INVALID",
            "missing or wrong token: send it in the 'authorization' metadata header "
            "(lookalike --token, or LOOKALIKE_TOKEN)",
        )
    )


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: str | TokenSet, *, open_health: bool = True) -> None:
        self._tokens = tokens if isinstance(tokens, TokenSet) else TokenSet(tokens)
        self._open = OPEN_PREFIXES if open_health else ()
        status = unauthenticated_status()

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort_with_status(status)

        def deny_stream(request_iterator: Any, context: grpc.ServicerContext) -> None:
            context.abort_with_status(status)

        def deny_unary_stream(request: Any, context: grpc.ServicerContext) -> None:
            context.abort_with_status(status)

        def deny_stream_stream(request_iterator: Any, context: grpc.ServicerContext) -> None:
            context.abort_with_status(status)

        self._deny = {
            (False, False): grpc.unary_unary_rpc_method_handler(deny),
            (True, False): grpc.stream_unary_rpc_method_handler(deny_stream),
            (False, True): grpc.unary_stream_rpc_method_handler(deny_unary_stream),
            (True, True): grpc.stream_stream_rpc_method_handler(deny_stream_stream),
        }

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        method = handler_call_details.method
        if self._open and method.startswith(self._open):
            return continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        if self._tokens.accepts(sent if isinstance(sent, str) else None):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self._deny[(bool(handler.request_streaming), bool(handler.response_streaming))]
