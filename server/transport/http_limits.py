"""Bounds of the HTTP port below the routes: connections, slow clients, bodies nobody reads, uvicorn's logs.

uvicorn times out nothing but idle keep-alive connections, so a client that sends half its headers or
half its body held a connection (and a file descriptor) forever. Here, per connection:

- at most ``max_connections`` at once (the descriptor budget): one more gets ``503`` and is closed
  at once;
- the request line and headers must arrive within ``header_timeout_s`` (the first request and each
  one on a kept-alive connection), else the connection is closed;
- a response sent before the request's body was read (a refusal: 401, 413, 429, 404, ...) carries
  ``Connection: close``, and the close lingers: the response is flushed and the write side shut
  (the client reads the answer), what the client still sends is discarded, and the socket is closed
  after ``LINGER_S`` at the latest, never held for the rest of a 1 GiB body;
- uvicorn's and asyncio's own errors go through the server's log handler and format (no uvicorn
  logging config), at most ``burst`` lines per logger and message every ``window_s``.

The body itself is read by the route with a deadline and a cap (``read_body``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

LINGER_S = 2.0
TOO_MANY_CONNECTIONS = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\n"
                        b"connection: close\r\ncontent-length: 47\r\n\r\n"
                        b"too many connections to this port; retry later\n")  # fmt: skip


def default_max_connections() -> int:
    """A quarter of the descriptor limit: the gRPC port, metrics, files and the model keep the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(8, soft // 4)


def no_delay(transport: asyncio.Transport) -> None:
    """TCP_NODELAY on the connection. asyncio sets it only on sockets made with ``proto=IPPROTO_TCP``, and the
    listening socket (``http_server.py``), like most, says 0; without it, the body h11 writes after the headers
    waits for the client's delayed ACK: every answer on a kept-alive connection took 40 ms more."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class LingeringTransport:
    """The connection's transport as uvicorn sees it; ``close()`` lingers (see the module docstring)."""

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop, linger_s: float) -> None:
        self._real = real
        self._loop = loop
        self._linger_s = linger_s
        self.closing = False
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def is_closing(self) -> bool:
        return self.closing or self._real.is_closing()

    def pause_reading(self) -> None:
        if not self.closing:
            self._real.pause_reading()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        real = self._real
        if real.is_closing():
            return
        try:
            if self._linger_s <= 0 or not real.can_write_eof():  # TLS: no half-close
                real.close()
                return
            real.write_eof()  # FIN once the response is flushed: the client reads it whole
            real.resume_reading()  # drain (and discard) what it still sends, so no reset eats the answer
        except (OSError, RuntimeError):
            real.close()
            return
        self._timer = self._loop.call_later(self._linger_s, real.close)

    def abort(self) -> None:
        self.closing = True
        self._real.abort()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def close_now(self) -> None:
        self.cancel()
        self._real.close()


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, a header deadline and lingering closes."""

    def __init__(self, *args: Any, max_connections: int, header_timeout_s: float, linger_s: float = LINGER_S,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.linger_s = linger_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._lingering: LingeringTransport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        no_delay(transport)
        over = len(self.connections) >= self.max_connections
        self._lingering = LingeringTransport(transport, self.loop, self.linger_s)
        super().connection_made(self._lingering)  # type: ignore[arg-type]
        if over:  # closed at once, not lingering: the point is to give the descriptor back
            transport.write(TOO_MANY_CONNECTIONS)
            self._lingering.closing = True
            transport.close()
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout, self.cycle)

    def _header_timeout(self, cycle: Any) -> None:
        """No new request (line and headers) since the timer was armed: close."""
        self._header_timer = None
        if self.cycle is cycle and self._lingering is not None and not self._lingering.is_closing():
            self._lingering.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None and self._lingering.closing:
            return  # the answer is sent; what follows is discarded
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._lingering is not None and not self._lingering.is_closing():
            self._arm_header_timer()  # the next request on this connection has the same deadline

    def shutdown(self) -> None:
        super().shutdown()
        if self._lingering is not None and self._lingering.closing:
            self._lingering.close_now()  # the server is stopping: no lingering

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)


def close_when_unread(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """ASGI wrapper: a response that starts before the request body was read whole says ``Connection: close``
    (uvicorn would otherwise read and discard the rest of the body, however long, on a kept-alive connection)."""

    async def guarded(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        names = {name: value for name, value in scope["headers"]}
        done = b"transfer-encoding" not in names and names.get(b"content-length", b"0").strip() in (b"", b"0")

        async def tracked_receive() -> dict[str, Any]:
            nonlocal done
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                done = True
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and not done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await app(scope, tracked_receive, tracked_send)

    return guarded


class BodyRefused(Exception):
    """The body was not read whole: ``status`` (408 too slow, 413 too large, 0 the client went away)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


async def read_body(receive: Callable[[], Awaitable[dict[str, Any]]], *, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, chunked or not, refused as soon as it passes ``max_bytes`` or ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - loop.time()
        try:
            if remaining <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            raise BodyRefused(408, "BODY_TIMEOUT", f"the body did not arrive within {timeout_s:g} s "
                                                   "(--http-body-timeout-s); send it at once") from None  # fmt: skip
        if message["type"] == "http.disconnect":
            raise BodyRefused(0, "CLIENT_GONE", "the client closed the connection before sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise BodyRefused(413, "MESSAGE_TOO_LARGE", f"the body is over the limit of {max_bytes} bytes "
                                                        "(--max-message-bytes)")  # fmt: skip
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class RateLimit(logging.Filter):
    """At most ``burst`` records per logger and message template every ``window_s``; the next one let
    through says how many were dropped. Keeps a flood of identical errors (a client that disconnects
    mid-body a thousand times, accept() out of descriptors) from filling the disk."""

    def __init__(self, burst: int = 5, window_s: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._seen: dict[tuple[str, str], list[float]] = {}  # key -> [window start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window_s:
            dropped = int(state[2]) if state is not None else 0
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} ({dropped} more like this in the last {self.window_s:g} s not logged)"
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False


SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "asyncio")
_RATE_LIMIT = RateLimit()


def route_server_logs() -> None:
    """uvicorn's and asyncio's records go to the root handler (the server's format), rate-limited."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()  # any handler a uvicorn logging config installed before
        logger.propagate = True
        if _RATE_LIMIT not in logger.filters:
            logger.addFilter(_RATE_LIMIT)


__all__ = ["BodyRefused", "BoundedH11Protocol", "RateLimit", "close_when_unread", "default_max_connections",
           "read_body", "route_server_logs"]  # fmt: skip
