"""Admission control: bounded concurrent calls and streams, idle streams cancelled.

The synchronous gRPC server gives every call a thread until it returns, so sixteen idle
BulkSetImages streams used to take every thread and the server stopped answering, health
checks included. Here unary calls and streams have separate bounded capacity; a call over
its limit gets RESOURCE_EXHAUSTED at once (no unbounded queue), and the thread pool is sized
so an admitted call always finds a thread.

Health and reflection need no token, so their streams (health ``Watch``, reflection's
``ServerReflectionInfo``) get a small share of their own (``--max-open-streams``): beyond it
RESOURCE_EXHAUSTED, and one idle for ``--stream-idle-s`` is cancelled. ``Health.Check`` (unary,
answered at once) is never refused; the pool keeps a few threads spare for it and for refusals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from lookalike.server.core.errors import ErrorKind, LookalikeError
from lookalike.server.transport.auth import OPEN_PREFIXES
from lookalike.server.transport.call_slots import CallSlots
from lookalike.server.transport.errors import to_status


class Undecodable:
    """Stands in for a request refused before parsing: too large, or bytes protobuf cannot parse."""

    def __init__(self, error: LookalikeError) -> None:
        self.status = to_status(error)


def safe_deserializer(deserialize: Callable[[bytes], Any] | None, max_bytes: int) -> Callable[[bytes], Any] | None:
    """Without this, a request protobuf cannot parse ends as INTERNAL; it is the client's input at fault."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        if len(data) > max_bytes:
            return Undecodable(
                LookalikeError(
                    ErrorKind.RESOURCE_EXHAUSTED,
                    "MESSAGE_TOO_LARGE",
                    f"the request is {len(data)} bytes, over the server limit of {max_bytes} (--max-message-bytes); "
                    "send fewer or smaller images per message",
                )  # fmt: skip
            )
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or a UnicodeDecodeError on a string field
            return Undecodable(
                LookalikeError(
                    ErrorKind.INVALID_ARGUMENT,
                    "REQUEST_UNDECODABLE",
                    f"the request could not be parsed ({type(exc).__name__}); send strings as valid UTF-8 and "
                    "the message as the .proto defines it",
                )  # fmt: skip
            )

    return parse


def _undecodable(context: grpc.ServicerContext, request: Undecodable) -> None:
    context.abort_with_status(request.status)


def _refusal(reason: str, message: str) -> grpc.Status:
    return to_status(LookalikeError(ErrorKind.RESOURCE_EXHAUSTED, reason, message))


class AdmissionInterceptor(grpc.ServerInterceptor):
    def __init__(
        self,
        *,
        slots: CallSlots,
        max_streams: int,
        stream_idle_s: float,
        max_message_bytes: int,
        max_open_streams: int = 8,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.slots = slots  # shared with the HTTP port: one --max-inflight for the server
        self._streams = threading.BoundedSemaphore(max_streams)
        self._open_streams = threading.BoundedSemaphore(max_open_streams)
        self.stream_idle_s = stream_idle_s
        self._too_many_open_streams = _refusal(
            "TOO_MANY_STREAMS",
            f"{max_open_streams} health Watch / reflection streams are open (--max-open-streams); close one or "
            "use Health.Check",
        )
        self._busy = _refusal(
            "TOO_MANY_REQUESTS",
            f"the server is serving its limit of {slots.limit} calls (--max-inflight); retry with backoff",
        )
        self._too_many_streams = _refusal(
            "TOO_MANY_STREAMS",
            f"{max_streams} BulkSetImages streams are open (--max-streams); finish one first or retry later",
        )

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return handler
        if details.method.startswith(OPEN_PREFIXES):
            if handler.response_streaming or handler.request_streaming:
                return self._wrap_open_stream(handler)
            return handler  # Health.Check: answered at once on a spare thread
        if handler.request_streaming:
            return self._wrap_stream(handler)
        if handler.unary_unary is None:
            return handler
        return self._wrap_unary(handler)

    def _wrap_unary(self, handler: Any) -> Any:
        inner = handler.unary_unary
        slots, refusal = self.slots, self._busy

        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                _undecodable(context, request)
            if not slots.take():
                context.abort_with_status(refusal)
            try:
                return inner(request, context)
            finally:
                slots.give_back()

        return grpc.unary_unary_rpc_method_handler(
            admitted,
            request_deserializer=safe_deserializer(handler.request_deserializer, self.max_message_bytes),
            response_serializer=handler.response_serializer,
        )

    def _wrap_stream(self, handler: Any) -> Any:
        inner = handler.stream_unary
        sem, refusal, idle_s = self._streams, self._too_many_streams, self.stream_idle_s

        def admitted(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            if not sem.acquire(blocking=False):
                context.abort_with_status(refusal)
            watch = IdleWatch(context, idle_s)

            def checked() -> Iterator[Any]:
                for item in watch.wrap(requests):
                    if isinstance(item, Undecodable):
                        _undecodable(context, item)
                    yield item

            try:
                return inner(checked(), context)
            finally:
                watch.close()
                sem.release()

        return grpc.stream_unary_rpc_method_handler(
            admitted,
            request_deserializer=safe_deserializer(handler.request_deserializer, self.max_message_bytes),
            response_serializer=handler.response_serializer,
        )

    def _wrap_open_stream(self, handler: Any) -> Any:
        """Health Watch (unary-stream) and reflection (stream-stream): a bounded share, idle ones cancelled.

        Idle means: the client sent nothing (reflection) and the server had nothing to send (Watch)
        for ``--stream-idle-s``."""
        sem, refusal, idle_s = self._open_streams, self._too_many_open_streams, self.stream_idle_s
        kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}

        def admitted(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if not sem.acquire(blocking=False):
                context.abort_with_status(refusal)
            watch = IdleWatch(context, idle_s)
            try:
                source = watch.wrap(request) if handler.request_streaming else request
                inner = handler.stream_stream if handler.request_streaming else handler.unary_stream
                responses = iter(inner(source, context))
                while True:
                    watch.waiting = not handler.request_streaming  # Watch: idle while nothing is sent
                    watch.last = time.monotonic()
                    try:
                        item = next(responses)
                    except StopIteration:
                        return
                    finally:
                        watch.waiting = False
                    yield item
            finally:
                watch.close()
                sem.release()

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(admitted, **kw)
        return grpc.unary_stream_rpc_method_handler(admitted, **kw)


class IdleWatch:
    """Cancels a stream whose client sends nothing for ``idle_s`` seconds (its thread is freed)."""

    def __init__(self, context: grpc.ServicerContext, idle_s: float) -> None:
        self.context = context
        self.idle_s = idle_s
        self.last = time.monotonic()
        self.waiting = False
        self.idle_cancelled = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-idle", daemon=True)
        self._thread.start()

    def wrap(self, requests: Iterator[Any]) -> Iterator[Any]:
        while True:
            self.waiting = True
            self.last = time.monotonic()
            try:
                item = next(requests)
            except StopIteration:
                return
            finally:
                self.waiting = False
            yield item

    def _run(self) -> None:
        while not self._done.wait(min(1.0, self.idle_s / 4)):
            if self.waiting and time.monotonic() - self.last > self.idle_s:
                self.idle_cancelled = True
                self.context.cancel()
                return

    def close(self) -> None:
        self._done.set()
