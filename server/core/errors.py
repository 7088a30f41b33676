"""Errors the core raises; the transport maps ``kind`` to a status code and keeps ``reason``.

A reason is a stable UPPER_SNAKE identifier clients can branch on (AIP-193); the
message says what was wrong and how to fix it, and never contains secrets.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class LookalikeError(Exception):
    """A failure with a stable reason, safe to show to the caller."""

    def __init__(self, kind: ErrorKind, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}

    def __repr__(self) -> str:
        return f"LookalikeError({self.kind.value}, {self.reason}, {self.message!r})"


def invalid(reason: str, message: str, **metadata: str) -> LookalikeError:
    return LookalikeError(ErrorKind.INVALID_ARGUMENT, reason, message, **metadata)


def not_found(reason: str, message: str, **metadata: str) -> LookalikeError:
    return LookalikeError(ErrorKind.NOT_FOUND, reason, message, **metadata)
