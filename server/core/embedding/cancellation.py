"""The call a piece of work belongs to, so work of a cancelled or expired call stops.

The transport opens a scope per call and cancels it when the call ends early (client
cancel, deadline); the embedder registers its queued model work with the current scope, and
the micro-batcher skips cancelled work instead of running the model for nobody.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

_current: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar("lookalike_call", default=None)


class CallScope:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: list[Future[Any]] = []
        self.cancelled = False

    def track(self, future: Future[Any]) -> None:
        with self._lock:
            if self.cancelled:
                future.cancel()
            else:
                self._futures.append(future)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            futures, self._futures = self._futures, []
        for future in futures:
            future.cancel()  # only work not yet started; a running batch finishes


@contextmanager
def call_scope() -> Iterator[CallScope]:
    scope = CallScope()
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


def track(future: Future[Any]) -> Future[Any]:
    """Tie ``future`` to the current call, if any."""
    scope = _current.get()
    if scope is not None:
        scope.track(future)
    return future
