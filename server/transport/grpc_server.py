"""The gRPC server: the three services, health (NOT_SERVING until recovery ends) and reflection."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from lookalike.server.config import ServerConfig
from lookalike.server.core.service import LookalikeService
from lookalike.server.transport.admission import AdmissionInterceptor
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

MESSAGE_SLACK = 16 << 20
MAX_SEND_BYTES = 256 << 20
SERVICE_NAMES = (
    match_service_pb2.DESCRIPTOR.services_by_name["MatchService"].full_name,
    database_service_pb2.DESCRIPTOR.services_by_name["DatabaseService"].full_name,
    search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
)


class GrpcServer:
    def __init__(
        self,
        service: LookalikeService,
        *,
        host: str,
        port: int,
        token: str | None,
        limits: ServerConfig,
        oss: object = None,
    ) -> None:
        admission = AdmissionInterceptor(
            max_inflight=limits.max_inflight,
            max_streams=limits.max_streams,
            stream_idle_s=limits.stream_idle_s,
            max_message_bytes=limits.max_message_bytes,
        )
        interceptors = [TokenAuthInterceptor(token), admission] if token else [admission]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limits.max_workers, thread_name_prefix="grpc"),
            interceptors=interceptors,
            options=[
                # gRPC's own limit sits above ours, so an oversized request gets our ErrorInfo;
                # past this one gRPC refuses it itself (RESOURCE_EXHAUSTED without details).
                ("grpc.max_receive_message_length", limits.max_message_bytes + MESSAGE_SLACK),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ],
        )
        match_service_pb2_grpc.add_MatchServiceServicer_to_server(MatchServicer(service), self.server)
        database_service_pb2_grpc.add_DatabaseServiceServicer_to_server(DatabaseServicer(service, oss), self.server)
        search_service_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(service), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"could not bind {host}:{port}; is another server running there?")
        self.set_serving(False)

    def start(self) -> None:
        self.server.start()

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in (*SERVICE_NAMES, ""):
            self.health.set(name, status)

    def stop(self, grace: float | None) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
