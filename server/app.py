"""Assembling and running the server: embedder, databases, gRPC with health and reflection."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from lookalike.server.config import ServerConfig
from lookalike.server.core.embedder import Embedder
from lookalike.server.core.service import LookalikeService
from lookalike.server.transport.auth import TokenAuthInterceptor
from lookalike.server.transport.database_servicer import DatabaseServicer
from lookalike.server.transport.match_servicer import MatchServicer
from lookalike.server.transport.search_servicer import SearchServicer
from lookalike.v1 import (
    database_service_pb2,
    database_service_pb2_grpc,
    match_service_pb2,
    match_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
)

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 64 << 20
SERVICE_NAMES = (
    match_service_pb2.DESCRIPTOR.services_by_name["MatchService"].full_name,
    database_service_pb2.DESCRIPTOR.services_by_name["DatabaseService"].full_name,
    search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    service: LookalikeService
    health: health.HealthServicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.service.embedder.close()


def resolve_model(config: ServerConfig) -> Path:
    if config.model is not None:
        return config.model
    from lookalike.server.core.default_model import default_model_path

    return default_model_path()


def create_server(config: ServerConfig) -> RunningServer:
    """Build and start a server; ``config.port == 0`` picks a free port (tests)."""
    embedder = Embedder(
        resolve_model(config),
        device=config.device,
        max_batch=config.max_batch,
        max_image_bytes=config.max_image_bytes,
        max_image_pixels=config.max_image_pixels,
    )
    service = LookalikeService(embedder)
    interceptors = [TokenAuthInterceptor(config.token)] if config.token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    match_service_pb2_grpc.add_MatchServiceServicer_to_server(MatchServicer(service), server)
    database_service_pb2_grpc.add_DatabaseServiceServicer_to_server(DatabaseServicer(service), server)
    search_service_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(service), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}; is another server running there?")
    server.start()
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, service, health_servicer)


def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then drain in-flight calls for ``grace_s`` seconds."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    running = create_server(config)
    log.info(
        "lookalike serving on %s:%d (model %s, dim %d, device %s, auth %s)",
        config.host,
        running.port,
        running.service.embedder.model_name,
        running.service.embedder.dimension,
        running.service.embedder.device,
        "token" if config.token else "off",
    )
    print(f"lookalike: listening on {config.host}:{running.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down (grace %.1fs)", config.grace_s)
    running.stop(config.grace_s)
    return 0
