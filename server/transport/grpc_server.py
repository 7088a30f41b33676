"""The gRPC server: the services, health (NOT_SERVING until recovery ends) and reflection.

Interceptors, outermost first: observability (every call counted, timed and logged, refusals
included), token auth (when tokens are configured), admission control (health and reflection
streams included: they need no token, so they get a bounded share of the thread pool). TLS when the settings
name a certificate and key (mutual TLS with a client CA).
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from lookalike.server.config import ServerConfig
from lookalike.server.core.service import LookalikeService
from lookalike.server.transport.admission import AdmissionInterceptor
from lookalike.server.transport.auth import TokenAuthInterceptor, TokenSet
from lookalike.server.transport.call_slots import CallSlots
from lookalike.server.transport.database_servicer import DatabaseServicer
from lookalike.server.transport.duplicate_servicer import DuplicateServicer
from lookalike.server.transport.match_servicer import MatchServicer
from lookalike.server.transport.metrics import ObservabilityInterceptor, ServerMetrics
from lookalike.server.transport.model_servicer import ModelServicer
from lookalike.server.transport.operation_servicer import OperationServicer
from lookalike.server.transport.search_servicer import SearchServicer
from lookalike.v1 import (
    database_service_pb2,
    database_service_pb2_grpc,
    duplicate_service_pb2,
    duplicate_service_pb2_grpc,
    match_service_pb2,
    match_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    operation_service_pb2,
    operation_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
)

MESSAGE_SLACK = 16 << 20
MAX_SEND_BYTES = 256 << 20
SERVICE_NAMES = (
    match_service_pb2.DESCRIPTOR.services_by_name["MatchService"].full_name,
    database_service_pb2.DESCRIPTOR.services_by_name["DatabaseService"].full_name,
    search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
    duplicate_service_pb2.DESCRIPTOR.services_by_name["DuplicateService"].full_name,
    operation_service_pb2.DESCRIPTOR.services_by_name["OperationService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
)


class GrpcServer:
    def __init__(
        self,
        service: LookalikeService,
        *,
        host: str,
        port: int,
        token: str | None | TokenSet,
        limits: ServerConfig,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.slots = CallSlots(limits.max_inflight)  # shared with the HTTP port
        admission = AdmissionInterceptor(
            slots=self.slots,
            max_streams=limits.max_streams,
            stream_idle_s=limits.stream_idle_s,
            max_message_bytes=limits.max_message_bytes,
            max_open_streams=limits.max_open_streams,
        )
        self.tokens = token if isinstance(token, TokenSet) else TokenSet(token)
        interceptors: list[grpc.ServerInterceptor] = [ObservabilityInterceptor(metrics)]
        if self.tokens.enabled:
            interceptors.append(TokenAuthInterceptor(self.tokens, open_health=limits.open_health))
        interceptors.append(admission)
        self.tls = limits.tls_cert is not None
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limits.max_workers, thread_name_prefix="grpc"),
            interceptors=interceptors,
            options=[
                # gRPC's own limit sits above ours, so an oversized request gets our ErrorInfo;
                # past this one gRPC refuses it itself (RESOURCE_EXHAUSTED without details).
                ("grpc.max_receive_message_length", limits.max_message_bytes + MESSAGE_SLACK),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                # one server per port: without this a second server binds the same port and takes half the calls
                ("grpc.so_reuseport", 0),
            ],
        )
        match_service_pb2_grpc.add_MatchServiceServicer_to_server(MatchServicer(service), self.server)
        database_service_pb2_grpc.add_DatabaseServiceServicer_to_server(DatabaseServicer(service), self.server)
        search_service_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(service), self.server)
        duplicate_service_pb2_grpc.add_DuplicateServiceServicer_to_server(DuplicateServicer(service), self.server)
        operation_service_pb2_grpc.add_OperationServiceServicer_to_server(OperationServicer(service), self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(service), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        address = f"{host}:{port}"
        if limits.tls_cert is not None and limits.tls_key is not None:
            from lookalike.server.transport.tls import server_credentials

            creds = server_credentials(limits.tls_cert, limits.tls_key, limits.tls_client_ca)
        else:
            creds = None
        try:
            self.port = self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        except RuntimeError:  # grpc's "Failed to bind to address"
            self.port = 0
        if self.port == 0:
            raise OSError(f"could not bind {host}:{port}: the port is in use (another server?); stop it or pick "
                          "another --port (0 picks a free one)")  # fmt: skip
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
