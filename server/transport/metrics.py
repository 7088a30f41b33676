"""Prometheus metrics and per-request logs: what the server did, how fast, and why it refused.

Every series lives in the server's own registry (two servers in one process do not mix).
Exposed on ``--metrics-port`` (off by default) at ``/metrics``; over TLS when the gRPC port
is (each handshake on the connection's own thread, with a deadline: a silent client blocks no one),
and, when tokens are set, behind the token (``Authorization: Bearer`` or the basic-auth password)
unless ``--open-metrics``; at most ``MAX_CONNECTIONS`` connections at once:

- ``lookalike_requests_total{method,code}`` and ``lookalike_request_seconds{method,code}``: every
  call, including those refused by auth or admission control;
- ``lookalike_batch_images`` / ``lookalike_batch_requests`` (histograms per model call) and
  ``lookalike_batch_queue_images`` (gauge): the micro-batcher at work;
- ``lookalike_images_decoded_total`` and ``lookalike_images_rejected_total{reason}``;
- ``lookalike_model_execution{mode,device}`` (1): bf16, frozen, eager, ... (``--cpu-exec``), fp16 on CUDA;
- ``lookalike_database_images{database}`` / ``lookalike_database_groups{database}``;
- ``process_resident_memory_bytes`` and friends; ``lookalike_gpu_memory_bytes`` with a GPU.

Each call is logged at debug as one line: request id (the client's ``x-request-id`` when it is
a short safe string, else a fresh one, sent back as ``x-request-id`` initial metadata), method,
code and milliseconds (with ``--log-format json`` also as the fields ``request_id``, ``rpc``, ``status``,
``latency_ms``). Nothing else of the request is logged: no metadata, tokens or image bytes.
"""

from __future__ import annotations

import base64
import logging
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from lookalike.server.core.errors import LookalikeError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("lookalike.requests")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id(metadata: Iterable[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and _SAFE_ID.match(value):
            return value
    return uuid.uuid4().hex[:16]


class ServerMetrics:
    """The server's series; ``observe_*`` hooks are called by the batcher, embedder and interceptor."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("lookalike_requests", "gRPC calls by method and status code", ["method", "code"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("lookalike_request_seconds", "gRPC call latency by method and status code",
                                 ["method", "code"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.inflight = Gauge("lookalike_requests_in_flight", "gRPC calls being served", ["method"], registry=r)
        self.batch_images = Histogram("lookalike_batch_images", "images per model call", buckets=BATCH_BUCKETS,
                                      registry=r)  # fmt: skip
        self.batch_requests = Histogram("lookalike_batch_requests", "requests sharing one model call",
                                        buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self.queue_images = Gauge("lookalike_batch_queue_images", "images waiting for a model call (every model's)",
                                  registry=r)  # fmt: skip
        self._batchers: list[Any] = []
        self.queue_images.set_function(lambda: sum(b.queue_depth for b in self._batchers))
        self.decoded = Counter("lookalike_images_decoded", "images decoded and preprocessed", registry=r)
        self.rejected = Counter("lookalike_images_rejected", "images refused, by reason", ["reason"], registry=r)
        self.execution = Gauge("lookalike_model_execution", "1 for how the model runs (--cpu-exec; fp16 on CUDA)",
                               ["mode", "device"], registry=r)  # fmt: skip
        ProcessCollector(registry=r)

    # -- hooks ----------------------------------------------------------------------------
    def observe_batch(self, images: int, requests: int) -> None:
        self.batch_images.observe(images)
        self.batch_requests.observe(requests)

    def watch_embedder(self, embedder: Any) -> None:
        """Batch sizes and queue depth from its batcher (called once per model: the queue gauge sums them);
        decode outcomes by wrapping ``prepare``."""
        batcher = embedder.batcher
        batcher.observers.append(self.observe_batch)
        self.execution.labels(getattr(embedder, "execution", "unknown"), str(embedder.device)).set(1)
        self._batchers.append(batcher)
        prepare = embedder.prepare
        decoded, rejected = self.decoded, self.rejected

        def counted_prepare(data: bytes, *, field: str = "image", **also: Any) -> Any:
            try:
                out = prepare(data, field=field, **also)
            except LookalikeError as err:
                rejected.labels(err.reason).inc()
                raise
            decoded.inc()
            return out

        embedder.prepare = counted_prepare  # prepare_many and embed call self.prepare, so every path counts

    def watch_databases(self, service: Any) -> None:
        """Database sizes, read through the service at scrape time."""
        self.registry.register(_DatabaseCollector(service))

    def watch_gpu(self) -> None:
        try:
            import torch
        except ImportError:
            return
        if torch.cuda.is_available():
            self.registry.register(_GpuCollector(torch))


class _DatabaseCollector:
    def __init__(self, service: Any) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        return []  # sizes are read at scrape time only

    def collect(self) -> Iterator[GaugeMetricFamily]:
        images = GaugeMetricFamily("lookalike_database_images", "registered images per database", labels=["database"])
        groups = GaugeMetricFamily("lookalike_database_groups", "groups per database", labels=["database"])
        count = GaugeMetricFamily("lookalike_databases", "databases on this server")
        try:
            dbs = self.service.all_databases()
        except LookalikeError:  # still recovering: no sizes yet
            dbs = []
        for db in dbs:
            images.add_metric([db.name], db.size)
            groups.add_metric([db.name], db.group_count)
        count.add_metric([], len(dbs))
        yield from (images, groups, count)


class _GpuCollector:
    def __init__(self, torch: Any) -> None:
        self.torch = torch

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("lookalike_gpu_memory_bytes", "GPU memory held by this process",
                                   labels=["device", "kind"])  # fmt: skip
        cuda = self.torch.cuda
        for i in range(cuda.device_count()):
            family.add_metric([str(i), "allocated"], cuda.memory_allocated(i))
            family.add_metric([str(i), "reserved"], cuda.memory_reserved(i))
        yield family


# -- the interceptor ------------------------------------------------------------------------
def _short(method: str) -> str:
    """``/lookalike.v1.MatchService/Match`` -> ``MatchService/Match``; the label set stays small."""
    service, _, name = method.rpartition("/")
    return f"{service.rpartition('.')[2]}/{name}"


def _code_of(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # older gRPC versions keep the raw integer
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "UNKNOWN" if failed else "OK"


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Outermost interceptor: counts and times every call (refusals included) and logs one line each."""

    def __init__(self, metrics: ServerMetrics | None) -> None:
        self.metrics = metrics

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = _short(details.method)
        rid = request_id(details.invocation_metadata)
        kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._wrap(handler.unary_unary, method, rid), **kw)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._wrap(handler.stream_unary, method, rid), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._wrap_streaming(handler.unary_stream, method, rid), **kw)
        return grpc.stream_stream_rpc_method_handler(self._wrap_streaming(handler.stream_stream, method, rid), **kw)

    def _begin(self, context: grpc.ServicerContext, method: str, rid: str) -> float:
        if self.metrics is not None:
            self.metrics.inflight.labels(method).inc()
        try:
            context.send_initial_metadata((("x-request-id", rid),))
        except Exception:  # already sent, or the call is gone: the id is only a convenience
            pass
        return time.perf_counter()

    def _end(self, context: grpc.ServicerContext, method: str, rid: str, started: float, failed: bool) -> None:
        elapsed = time.perf_counter() - started
        code = _code_of(context, failed)
        metrics = self.metrics
        if metrics is not None:
            metrics.requests.labels(method, code).inc()
            metrics.latency.labels(method, code).observe(elapsed)
            metrics.inflight.labels(method).dec()
        if log.isEnabledFor(logging.DEBUG):
            ms = round(elapsed * 1000, 2)
            fields = {"request_id": rid, "rpc": method, "status": code, "latency_ms": ms}  # JSON lines' fields
            log.debug("request id=%s method=%s code=%s ms=%.2f", rid, method, code, ms, extra=fields)

    def _wrap(self, inner: Callable[..., Any], method: str, rid: str) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(context, method, rid)
            failed = True
            try:
                out = inner(request, context)
                failed = False
                return out
            finally:
                self._end(context, method, rid, started, failed)

        return call

    def _wrap_streaming(self, inner: Callable[..., Any], method: str, rid: str) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = self._begin(context, method, rid)
            failed = True
            try:
                yield from inner(request, context)
                failed = False
            finally:
                self._end(context, method, rid, started, failed)

        return call


# -- the HTTP endpoint ----------------------------------------------------------------------
MAX_CONNECTIONS = 32  # a scrape is one short request; more at once is not Prometheus
CONNECTION_TIMEOUT_S = 10.0  # the TLS handshake, the request and the answer each must progress within this


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per connection, at most ``MAX_CONNECTIONS``; TLS is set up on that thread, never in accept."""

    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the limit: closed at once
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CONNECTION_TIMEOUT_S)
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:
            secure = self.ssl_context.wrap_socket(request, server_side=True)  # the handshake, on this thread
        except (OSError, ValueError):  # not TLS, a bad certificate, or silent past the deadline
            return
        try:
            super().finish_request(secure, client_address)
        finally:
            secure.close()


class _QuietHandler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news; never log headers
        pass


def _guarded(app: Callable[..., Any], accepts: Callable[[str | None], bool]) -> Callable[..., Any]:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sent = environ.get("HTTP_AUTHORIZATION")
        if sent and sent.lower().startswith("basic "):  # Prometheus basic_auth: the token is the password
            try:
                sent = base64.b64decode(sent[6:]).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                sent = None
        if not accepts(sent):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"missing or wrong token: send 'Authorization: Bearer <token>'\n"]
        return app(environ, start_response)

    return guarded


class MetricsEndpoint:
    """``/metrics`` over HTTP(S) on its own thread."""

    def __init__(
        self,
        metrics: ServerMetrics,
        *,
        host: str,
        port: int,
        accepts: Callable[[str | None], bool] | None = None,
        tls: tuple[Path, Path, Path | None] | None = None,
    ) -> None:
        app = make_wsgi_app(metrics.registry)
        if accepts is not None:
            app = _guarded(app, accepts)
        try:
            self.httpd = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
        except OSError as exc:
            raise OSError(f"could not bind the metrics port {host}:{port} ({exc.strerror}); "
                          "choose another --metrics-port") from None  # fmt: skip
        if tls is not None:
            from lookalike.server.transport.tls import server_ssl_context

            self.httpd.ssl_context = server_ssl_context(*tls)  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
