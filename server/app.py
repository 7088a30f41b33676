"""Assembling and running the server: embedder, persistence, core, transports.

Start-up order: bind the port with health NOT_SERVING, recover (snapshot + log replay),
then SERVING. Shutdown: stop taking calls, drain, take a final snapshot, close the log.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookalike.server.config import ServerConfig
from lookalike.server.core.backends.api import snapshot_damaged
from lookalike.server.core.backends.builtin.catalog import Catalog
from lookalike.server.core.backends.builtin.hnsw import HnswSettings
from lookalike.server.core.backends.builtin.persistence import Persistence
from lookalike.server.core.dedup.finder import DedupSettings
from lookalike.server.core.embedding.embedder import Embedder
from lookalike.server.core.embedding.models import BUILTIN, ModelRegistry, ModelSource
from lookalike.server.core.errors import LookalikeError
from lookalike.server.core.service import Limits, LookalikeService
from lookalike.server.storage.dir_lock import DataDirLock
from lookalike.server.storage.image_store import ImageStore
from lookalike.server.transport.auth import TokenSet
from lookalike.server.transport.grpc_server import GrpcServer
from lookalike.server.transport.metrics import MetricsEndpoint, ServerMetrics

from lookalike.oss import OssClient, OssCredentials

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    grpc: GrpcServer
    service: LookalikeService
    recovered: threading.Event
    stopping: threading.Event
    recovery_error: list[BaseException]
    http: Any = None  # the PAI-compatible HTTP gateway, when --http-port is set
    lock: DataDirLock | None = None  # the data directory, held for the server's life
    metrics: ServerMetrics | None = None
    metrics_endpoint: MetricsEndpoint | None = None
    models: ModelRegistry | None = None  # every loaded model; the service serves the default one

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until recovery finished; re-raise its error if it failed."""
        self.recovered.wait(timeout)
        if self.recovery_error:
            raise self.recovery_error[0]

    def stop(self, grace: float | None = 5.0, *, snapshot: bool = True) -> None:
        self.stopping.set()
        if self.http is not None:
            self.http.stop()
        self.grpc.stop(grace)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        self.service.close(snapshot=snapshot)
        if self.models is not None:
            self.models.close()  # the models beside the default, which the service closed
        if self.lock is not None:
            self.lock.release()


def resolve_model(config: ServerConfig) -> Path:
    """The default model's file: the --model entry --default-model names, else the first; with no --model, the one
    of --models-dir --default-model names (or its only one); else the embedded default, converted once and cached."""
    specs = config.model_specs()
    if specs:
        path = next((path for name, path in specs if name and name == config.default_model), specs[0][1])
        return builtin_model(config) if path == BUILTIN else Path(path)
    if config.models_dir is not None:
        sources = config.model_sources()
        return next((s.path for s in sources if s.name == config.default_model), sources[0].path)
    return builtin_model(config)


def builtin_model(config: ServerConfig) -> Path:
    """The embedded default model's file (EfficientNet-Lite0 ImageNet), converted once and cached."""
    from lookalike.server.core.embedding.default_model import default_model_path

    return default_model_path(config.cache_dir)


def split_workers(total: int, models: int) -> list[int]:
    """The model workers of each of ``models`` models: ``total`` shared out, the first ones taking the remainder,
    and at least one each (a model with no worker could not run)."""
    return [max(1, total // models + (1 if i < total % models else 0)) for i in range(models)]


def build_models(config: ServerConfig, device: str, budget: dict[str, int]) -> ModelRegistry:
    """Every model of the settings (``ServerConfig.model_sources``; none: the embedded default), loaded into one
    registry. They share the budget's model workers; each keeps the torch threads of one worker."""
    given = [ModelSource(builtin_model(config), s.name, s.origin) if str(s.path) == BUILTIN else s
             for s in config.model_sources()]  # fmt: skip
    sources = given or [ModelSource(resolve_model(config), "", "the default model")]
    workers = split_workers(budget["model_workers"], len(sources))

    def make(source: ModelSource, position: int) -> Embedder:
        return Embedder(
            source.path,
            device=config.device,
            max_batch=config.model_batch(device, workers[position] if len(sources) > 1 else None),
            max_wait_s=config.batch_wait_s,
            max_image_bytes=config.max_image_bytes,
            max_image_pixels=config.max_image_pixels,
            max_aspect_ratio=config.max_aspect_ratio,
            decode_budget_pixels=config.decode_budget_pixels,
            preprocess_threads=budget["preprocess"],
            cpu_exec=config.cpu_exec,
            model_workers=workers[position],
            model_threads=budget["torch"],
            background=config.reindex_worker,
            background_idle_s=config.reindex_worker_idle_s,
            background_workers=(budget["model_workers"], config.model_batch("cpu", budget["model_workers"])),
        )

    registry = ModelRegistry.load(sources, make, default=config.default_model or "")
    if len(registry) > 1:
        log.info("models: %s; default %s", ", ".join(f"{name} (dim {e.dimension}, {w} model workers)"
                 for (name, e), w in zip(registry.items(), workers, strict=True)), registry.default)  # fmt: skip
    return registry


def make_oss(config: ServerConfig) -> OssClient:
    """The server's OSS client, from its settings alone (the keys: ``OSS_ACCESS_KEY_*``, else the credentials file);
    every value is passed, so nothing falls back to the environment and a flag such as --no-oss-path-style wins."""
    credentials = OssCredentials.find(config.oss_access_key_id, config.oss_access_key_secret,
                                      config.oss_credentials_file)  # fmt: skip
    return OssClient(config.oss_endpoint, credentials, path_style=config.oss_path_style,
                     retries=config.oss_retries)  # fmt: skip


def apply_thread_budget(config: ServerConfig, device: str) -> dict[str, int]:
    """Size torch's and the search kernels' pools from the one budget (the decode pool is sized by the embedder)."""
    import torch

    budget = config.thread_budget_for(device)
    torch.set_num_threads(budget["torch"])
    try:
        torch.set_num_interop_threads(1)  # the batcher's workers are the parallel model calls; none inside one
    except RuntimeError:  # already set, or torch already ran parallel work in this process
        pass
    try:
        from lookalike import native

        native.set_threads(budget["kernel"])
    except (ImportError, AttributeError) as exc:
        log.warning("search kernel threads not set (%s)", exc)
    return budget


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def create_server(config: ServerConfig, *, wait: bool = True) -> RunningServer:
    """Build and start a server; ``config.port == 0`` picks a free port (tests).

    With ``wait`` the call returns after recovery; otherwise recovery runs in the background
    while health says NOT_SERVING and data calls answer UNAVAILABLE / RECOVERING. The data
    directory is locked first (a second server on it stops here, naming the first one's PID).
    """
    lock = DataDirLock(config.data_dir).acquire() if config.persist and config.index == "builtin" else None
    try:
        running = _start(config, wait=wait)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    running.lock = lock
    return running


def image_store(config: ServerConfig, persistence: Persistence | None) -> ImageStore:
    """Kept images: ``--images-dir`` or ``<data-dir>/images``, mirrored to the OSS root; in memory without
    ``--persist`` (the built-in store); with Milvus, a directory the replicas share."""
    if config.images_dir is not None:
        return ImageStore(config.images_dir, fsync=config.fsync)
    if config.persist:
        remote = persistence.remote if persistence is not None else None
        return ImageStore(config.data_dir / "images", fsync=config.fsync, remote=remote)
    return ImageStore(None)


def stop_on_damage(name: str, why: str) -> None:
    """A snapshot file found damaged after start-up (``--snapshot-check background``): stop as start-up would
    have, at once and before any snapshot could give the damaged rows new checksums; the log keeps every
    acknowledged write (as after a kill -9)."""
    print(f"lookalike serve: {snapshot_damaged(name, why).message}", file=sys.stderr, flush=True)
    os._exit(1)


def _start(config: ServerConfig, *, wait: bool) -> RunningServer:
    tokens = TokenSet(config.token, config.token_file)  # a bad token file stops start-up here
    device = config.device or ("cuda" if _cuda_available() else "cpu")
    budget = apply_thread_budget(config, device)
    models = build_models(config, device, budget)
    oss = make_oss(config)
    persistence = None
    if config.persist and config.index == "builtin":  # with Milvus, Milvus keeps the log and the segments
        persistence = Persistence(
            config.data_dir,
            root=config.root,
            oss=oss,
            fsync=config.fsync,
            fsync_interval_s=config.fsync_interval_s,
            ship_interval_s=config.ship_interval_s,
            repair=config.repair,
            check_in_background=config.snapshot_check == "background",
            on_damage=stop_on_damage,
        )
    hnsw = HnswSettings(
        threshold=config.hnsw_threshold,
        connectivity=config.hnsw_connectivity,
        expansion_add=config.hnsw_expansion_add,
        expansion_search=config.hnsw_expansion_search,
        rerank_factor=config.hnsw_rerank,
        dtype=config.hnsw_dtype,
    )
    images = image_store(config, persistence)
    if persistence is not None and persistence.mirror is not None:  # kept images reach OSS before the log naming them
        persistence.mirror.before_ship = images.push_pending
    backend = milvus_backend(config) or (
        lambda dimension, model: Catalog(
            dimension, model, persistence, hnsw=hnsw, retry_window=config.retry_window, images=images
        )  # fmt: skip
    )
    dedup = DedupSettings(exact_max_images=config.dedup_exact_max_images, block_seconds=config.dedup_block_seconds,
                          max_pairs=config.dedup_max_pairs)  # fmt: skip
    service = LookalikeService(
        models, backend, Limits.from_config(config), oss=oss, boundaries=config.boundaries(),
        operations_root=config.data_dir / "operations" if persistence is not None else None, dedup=dedup,
        max_operations=config.max_operations, operation_retention_s=config.operation_retention_s, images=images,
        keep=config.keep,
    )  # fmt: skip
    metrics = ServerMetrics()
    for _, each in models.items():
        metrics.watch_embedder(each)
    metrics.watch_databases(service)
    metrics.watch_gpu()
    server = GrpcServer(service, host=config.host, port=config.port, token=tokens, limits=config, metrics=metrics)
    endpoint = start_metrics(config, metrics, tokens)
    server.start()
    http = None
    if config.http_port is not None:
        from lookalike.server.transport.http_gateway import PaiGateway
        from lookalike.server.transport.http_server import HttpLimits, HttpServer, create_app

        gateway = PaiGateway(service, token=tokens if tokens.enabled else None,
                             max_body_bytes=config.max_message_bytes, oss=oss, metrics=metrics,
                             shared_init=config.pai_init_shared)  # fmt: skip
        http_limits = HttpLimits.from_config(config)
        http = HttpServer(
            create_app(gateway, http_limits, server.slots), config.host, config.http_port, limits=http_limits,
            tls_cert=str(config.tls_cert) if config.tls_cert else None,
            tls_key=str(config.tls_key) if config.tls_key else None,
            tls_client_ca=str(config.tls_client_ca) if config.tls_client_ca else None,
        )  # fmt: skip
        http.start()
    running = RunningServer(server, service, threading.Event(), threading.Event(), [], http)
    running.metrics, running.metrics_endpoint, running.models = metrics, endpoint, models

    def recover() -> None:
        try:
            if config.index == "milvus" or persistence is not None:
                service.recover()  # Milvus: waits for it; health stays NOT_SERVING until it answers
            if persistence is not None:
                if persistence.remote is not None:  # the first upload now, so shipping can start at once
                    try:
                        service.checkpoint()
                    except LookalikeError as err:
                        log.warning("first snapshot upload: %s", err.message)
                persistence.start_shipping(service.checkpoint)
            server.set_serving(True)
        except BaseException as exc:  # start-up must say why it could not serve
            running.recovery_error.append(exc)
            log.error("recovery failed: %s", exc)
        finally:
            running.recovered.set()
        if persistence is None and config.persist and config.image_sweep_interval_s > 0:  # Milvus: no counts
            while not running.stopping.wait(config.image_sweep_interval_s):
                try:
                    removed = service.sweep_images()
                    if removed:
                        log.info("image store sweep: removed %d blobs no image references", removed)
                except (LookalikeError, OSError) as err:
                    log.warning("image store sweep: %s", getattr(err, "message", err))
        if persistence is not None and config.snapshot_interval_s > 0:
            while not running.stopping.wait(config.snapshot_interval_s):
                try:
                    info = service.checkpoint()
                    log.info("snapshot at log record %d: %d images, %d bytes", info.checkpoint_seq,
                             info.image_count, info.size_bytes)  # fmt: skip
                except LookalikeError as err:
                    log.warning("periodic snapshot: %s", err.message)

    threading.Thread(target=recover, name="recovery", daemon=True).start()
    if wait:
        try:
            running.wait_ready()
        except BaseException:
            server.stop(0)
            if endpoint is not None:
                endpoint.stop()
            raise
    return running


def milvus_backend(config: ServerConfig) -> Any:
    """A factory of the Milvus backend with --index milvus, else None (the built-in store)."""
    if config.index != "milvus":
        return None
    from lookalike.server.core.backends.milvus.catalog import MilvusCatalog, MilvusIndexSettings
    from lookalike.server.storage.milvus_store import MilvusStore

    assert config.milvus_uri is not None
    store = MilvusStore(config.milvus_uri, token=config.milvus_secret(), db_name=config.milvus_db,
                        prefix=config.milvus_prefix, timeout_s=config.milvus_timeout_s,
                        consistency=config.milvus_consistency)  # fmt: skip
    index = MilvusIndexSettings(config.milvus_index, config.milvus_metric, config.milvus_hnsw_m,
                                config.hnsw_expansion_add, config.hnsw_expansion_search)  # fmt: skip
    return lambda dimension, model: MilvusCatalog(dimension, model, store, index=index,
                                                  retry_window=config.retry_window)  # fmt: skip


def start_metrics(config: ServerConfig, metrics: ServerMetrics, tokens: TokenSet) -> MetricsEndpoint | None:
    if config.metrics_port is None:
        return None
    tls: Any = None
    if config.tls_cert is not None and config.tls_key is not None:
        tls = (config.tls_cert, config.tls_key, config.tls_client_ca)
    guard = tokens.accepts if tokens.enabled and not config.open_metrics else None
    return MetricsEndpoint(metrics, host=config.metrics_host or config.host, port=config.metrics_port,
                           accepts=guard, tls=tls)  # fmt: skip


def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then drain in-flight calls for ``grace_s`` seconds and snapshot."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    running = create_server(config, wait=False)
    # The last word is the address to pass to --server (https:// when clients need TLS to talk to it).
    scheme = "https://" if config.tls_cert is not None else ""
    print(f"lookalike: listening on {scheme}{config.host}:{running.port}", flush=True)
    if running.http_port is not None:
        http = f"{scheme or 'http://'}{config.host}:{running.http_port}/"
        print(f"lookalike: PAI-compatible HTTP API on {http}", flush=True)
    endpoint = running.metrics_endpoint
    metrics_host = config.metrics_host or config.host
    metrics_url = f"{endpoint.scheme}://{metrics_host}:{endpoint.port}/metrics" if endpoint is not None else ""
    if metrics_url:  # its own port: 0 picks a free one, said here
        print(f"lookalike: metrics on {metrics_url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    running.recovered.wait()
    if running.recovery_error:
        running.grpc.stop(0)
        raise running.recovery_error[0]
    embedder = running.service.embedder
    log.info(
        "lookalike serving on %s:%d (model %s, dim %d, device %s, auth %s, tls %s, data %s%s, fsync %s, "
        "threads %s, metrics %s)",
        config.host, running.port, embedder.model_name, embedder.dimension, embedder.device,
        "token" if running.grpc.tokens.enabled else "off",
        ("mutual" if config.tls_client_ca else "on") if config.tls_cert else "off",
        config.data_dir.resolve() if config.index == "builtin" else f"milvus {config.milvus_uri}",
        f", root {config.root}" if config.root else "", config.fsync, config.thread_budget_for(embedder.device),
        metrics_url or "off",
    )  # fmt: skip
    print("lookalike: ready", flush=True)
    stop.wait()
    log.info("shutting down (grace %.1fs), then a final snapshot", config.grace_s)
    running.stop(config.grace_s)
    return 0
