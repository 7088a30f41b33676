"""The HTTP server of the PAI-EAS gateway: the FastAPI app and uvicorn in a thread, bounded before it reads.

A ``POST`` is checked in this order, each refusal answered at once (and the connection closed, so
an unread body is never read; see ``http_limits.py``): the token (401), ``Content-Length`` over
``--max-message-bytes`` (413), ``--max-inflight`` calls already served on this port (429 with
``Retry-After``, as gRPC refuses with RESOURCE_EXHAUSTED); then the body is read with a cap (413 as
soon as a chunked body passes it) and a deadline (``--http-body-timeout-s``, 408), and the call runs
on a thread of its own pool (one per admitted call). Slow headers, too many connections and
uvicorn's own logs are handled below the routes, in ``http_limits.py``.
"""

from __future__ import annotations

import functools
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from lookalike.server import defaults as d
from lookalike.server.transport.auth import token_matches
from lookalike.server.transport.call_slots import CallSlots
from lookalike.server.transport.console import console_router
from lookalike.server.transport.http_gateway import PaiGateway
from lookalike.server.transport.http_images import add_image_routes
from lookalike.server.transport.http_limits import (
    BodyRefused,
    BoundedH11Protocol,
    close_when_unread,
    default_max_connections,
    read_body,
    route_server_logs,
)
from lookalike.server.transport.pai_schema import components, operation

CODES = {400: "INVALID_ARGUMENT", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED"}
RETRY_AFTER_S = 1
MAX_HEADER_BYTES = 16 << 10  # request line and headers (h11's limit); PAI requests carry a few hundred bytes
BACKLOG = 1024


@dataclass(frozen=True)
class HttpLimits:
    """What the HTTP port admits; ``ServerConfig`` fills it (``HttpLimits.from_config``)."""

    max_inflight: int = 32
    header_timeout_s: float = d.HTTP_HEADER_TIMEOUT_S
    body_timeout_s: float = d.HTTP_BODY_TIMEOUT_S
    keep_alive_s: int = d.HTTP_KEEP_ALIVE_S
    max_connections: int = d.HTTP_MAX_CONNECTIONS  # 0: a quarter of the descriptor limit

    @classmethod
    def from_config(cls, config: Any) -> HttpLimits:
        return cls(max_inflight=config.max_inflight, header_timeout_s=config.http_header_timeout_s,
                   body_timeout_s=config.http_body_timeout_s, max_connections=config.http_max_connections)  # fmt: skip


def refusal(gateway: PaiGateway, status: int, reason: str, message: str, **headers: str) -> JSONResponse:
    """A PAI envelope for a call refused before it was read, counted like every call."""
    body = {"request_id": uuid.uuid4().hex, "success": False, "status": status, "info": "", "error_code": reason,
            "error_msg": message}  # fmt: skip
    metrics = getattr(gateway, "metrics", None)
    if metrics is not None:
        metrics.requests.labels("pai", CODES.get(status, "UNKNOWN")).inc()
    return JSONResponse(body, status_code=status, headers=headers or None)


def create_app(gateway: PaiGateway, limits: HttpLimits | None = None, slots: CallSlots | None = None) -> FastAPI:
    """The PAI app; ``slots`` are the server's call slots (shared with gRPC), else its own."""
    limits = limits or HttpLimits()
    slots = slots or CallSlots(limits.max_inflight)
    app = FastAPI(title="Lookalike PAI-EAS compatible API", version="1",
                  description="Image matching and retrieval, compatible with the PAI-EAS JSON scripts.")  # fmt: skip
    pool: list[Any] = []  # the call threads' limiter, made in the event loop on first use

    async def predict(request: Request) -> Response:
        import anyio

        headers = request.headers
        authorization, content_type = headers.get("authorization"), headers.get("content-type")
        if gateway.token is not None and not token_matches(authorization, gateway.token):
            return gateway.handle(b"", authorization, content_type)  # 401, before a byte of the body is read
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > gateway.max_body_bytes:
            return refusal(gateway, 413, "MESSAGE_TOO_LARGE", f"the body is {int(length)} bytes, over the limit of "
                           f"{gateway.max_body_bytes} (--max-message-bytes)")  # fmt: skip
        if not slots.take():
            return refusal(gateway, 429, "TOO_MANY_REQUESTS", f"the server is serving its limit of "
                           f"{slots.limit} calls (--max-inflight); retry with backoff",
                           **{"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        try:
            try:
                raw = await read_body(request.receive, max_bytes=gateway.max_body_bytes,
                                      timeout_s=limits.body_timeout_s)  # fmt: skip
            except BodyRefused as err:
                if err.status == 0:  # nobody is left to answer
                    return Response(status_code=400)
                return refusal(gateway, err.status, err.reason, err.message)
            if not pool:
                pool.append(anyio.CapacityLimiter(limits.max_inflight))
            return await anyio.to_thread.run_sync(gateway.handle, raw, authorization, content_type, limiter=pool[0])
        finally:
            slots.give_back()

    async def healthz() -> JSONResponse:
        """For load balancers: 200 once the databases are loaded (or the index backend answers), else 503."""
        ready = gateway.service.ready
        return JSONResponse({"status": "SERVING" if ready else "NOT_SERVING"}, status_code=200 if ready else 503)

    app.add_api_route("/healthz", healthz, methods=["GET"], summary="Readiness (200 serving, 503 not yet)")
    app.add_api_route("/", predict, methods=["POST"], openapi_extra=operation(), summary="Match or retrieval")
    app.add_api_route("/api/predict/{service_name}", predict, methods=["POST"],
                      openapi_extra=operation(path_parameter="service_name"),
                      summary="Match or retrieval (the PAI-EAS URL path)")  # fmt: skip
    add_image_routes(app, gateway, slots, RETRY_AFTER_S)
    app.include_router(console_router(gateway, slots))  # the web console at /ui (console/)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus the per-function models the routes refer to (the gateway parses bodies itself)."""
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(components())
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class HttpServer:
    """uvicorn in a thread of the serving process; HTTPS (and client certificates) with the gRPC TLS files."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(BACKLOG)  # connections queue from now on, before uvicorn's loop is up
        self.port = self._sock.getsockname()[1]
        tls: dict[str, Any] = {}
        if tls_cert is not None:
            import ssl

            tls = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key}
            if tls_client_ca is not None:
                tls |= {"ssl_ca_certs": tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        limits = limits or HttpLimits()
        protocol = functools.partial(BoundedH11Protocol, header_timeout_s=limits.header_timeout_s,
                                     max_connections=limits.max_connections or default_max_connections())  # fmt: skip
        route_server_logs()
        config = uvicorn.Config(close_when_unread(app), http=protocol, log_config=None, log_level="warning",
                                access_log=False, timeout_keep_alive=limits.keep_alive_s, backlog=BACKLOG,
                                h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_graceful_shutdown=5,
                                lifespan="off", **tls)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True,
                                        name="http")  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


__all__ = ["HttpServer", "create_app"]
