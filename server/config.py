"""The server's one settings object: every option a flag and an environment variable, validated.

Precedence: command-line flag, then ``LOOKALIKE_<NAME>`` (or the option's named variable),
then the default below. ``lookalike serve --help`` lists every option with its default and
variable; a bad value stops start-up with one line that names the option and what it accepts.
Secrets with no flag (a flag would show them in ``ps``) come only from the environment: the shared
token from ``LOOKALIKE_TOKEN``, OSS keys from ``OSS_ACCESS_KEY_ID`` / ``OSS_ACCESS_KEY_SECRET`` (or
``--oss-credentials-file``), the Milvus token from ``LOOKALIKE_MILVUS_TOKEN`` (or ``--milvus-token-file``);
their flags are refused with where to put the value. Nothing else of the server reads the environment: values go
down from here as arguments, and defaults come from ``server/defaults.py`` (and ``lookalike/oss.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.server import defaults as d
from lookalike.server.core.embedding.models import (
    MODEL_NAME_RULE,
    ModelSource,
    model_sources,
    parse_model_specs,
    valid_model_name,
)
from lookalike.server.core.locations import Boundaries
from lookalike.server.defaults import (
    CPU_EXEC_CHOICES,
    CPU_MAX_BATCH,
    CPU_MAX_BATCH_PER_WORKER,
    FSYNC_MODES,
    GPU_MAX_BATCH,
)

from lookalike import oss

__all__ = ["CPU_EXEC_CHOICES", "CPU_MAX_BATCH", "CPU_MAX_BATCH_PER_WORKER", "DEFAULT_DATA_DIR", "DEFAULT_PORT",
           "FSYNC_MODES", "GPU_MAX_BATCH", "ServerConfig"]  # fmt: skip

# Defaults of the settings only this object uses; every other default lives in server/defaults.py
# (the core's constructors use it too) or lookalike/oss.py (shared with the CLI and the trainer).
DEFAULT_PORT = 50051
DEFAULT_DATA_DIR = Path("./lookalike-data")
REFUSED = "refused_flag__"  # the dest of a secret's refused flag


def opt(
    default: Any, help: str, *, env: str | None = None, flag: str | None = None, secret: bool = False, **kw: Any
) -> Any:
    """A setting: a flag and an environment variable; ``secret`` ones never appear in a repr or a log."""
    return field(default=default, repr=not secret, metadata={"help": help, "env": env, "flag": flag, **kw})


@dataclass(frozen=True)
class ServerConfig:
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    port: int = opt(DEFAULT_PORT, "gRPC port; 0 picks a free one", min=0, max=65535)
    http_port: int | None = opt(None, "serve the PAI-EAS compatible JSON API on this port too (off when unset)",
                                min=0, max=65535)  # fmt: skip
    http_header_timeout_s: float = opt(d.HTTP_HEADER_TIMEOUT_S, "HTTP port: a request's line and headers must "
                                       "arrive within this, else the connection is closed", min=0.1)  # fmt: skip
    http_body_timeout_s: float = opt(d.HTTP_BODY_TIMEOUT_S, "HTTP port: a request's body must arrive within this "
                                     "(from its headers), else 408 and the connection is closed", min=0.1)  # fmt: skip
    http_max_connections: int = opt(d.HTTP_MAX_CONNECTIONS, "HTTP port: connections open at once, beyond it 503 and "
                                    "closed; 0 = a quarter of the file descriptor limit", min=0)  # fmt: skip
    data_dir: Path = opt(DEFAULT_DATA_DIR, "where the write-ahead log and snapshots live")
    export_root: Path | None = opt(None, "the only directory exports, imports and PAI local roots may use; "
                                   "a relative location is taken relative to it (default: <data-dir>/exports)",
                                   )  # fmt: skip
    # Models (server/core/embedding/models.py): every --model entry, then every *.pt of --models-dir.
    model: str | None = opt(None, "embedder file from `lookalike train` (default: EfficientNet-Lite0 ImageNet); "
                            "NAME=PATH serves it as NAME (PATH builtin: the default model); repeat the flag (or "
                            "separate by commas) for several models, named by the file's model name or stem when "
                            "given no NAME", repeat=True)  # fmt: skip
    models_dir: Path | None = opt(None, "serve every *.pt model file of this directory, named by its file stem")
    default_model: str | None = opt(None, "name of the model new databases and calls naming none use (default: the "
                                    "first --model; with --models-dir alone, its only model)")  # fmt: skip
    cache_dir: Path | None = opt(None, "where the default model is converted once and cached, under models/ "
                                 "(none: $XDG_CACHE_HOME/lookalike, else ~/.cache/lookalike)")  # fmt: skip
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda when available)")
    token: str | None = field(default=None, repr=False, metadata={"env_only": "LOOKALIKE_TOKEN"})
    log_level: str = opt("info", "log level", choices=("debug", "info", "warning", "error"))
    log_format: str = opt("text", "log lines as text, or json (one object a line)", choices=("text", "json"))
    # Work and limits.
    max_batch: int | None = opt(None, f"images per model call (the micro-batcher's batch); default {GPU_MAX_BATCH} on "
                                "a GPU; on CPU, where larger batches fall out of cache and run slower per image, "
                                f"{CPU_MAX_BATCH_PER_WORKER} with several model workers and {CPU_MAX_BATCH} with one",
                                min=1, max=4096)  # fmt: skip
    max_inflight: int = opt(32, "calls served at once, gRPC unary and HTTP together; beyond it RESOURCE_EXHAUSTED "
                            "(HTTP 429) at once", min=1, max=4096)  # fmt: skip
    max_streams: int = opt(4, "BulkSetImages streams open at once; beyond it RESOURCE_EXHAUSTED", min=1, max=1024)
    stream_idle_s: float = opt(60.0, "a stream that sends nothing for this long is cancelled (health Watch and "
                               "reflection streams too)", min=0.1)  # fmt: skip
    max_open_streams: int = opt(d.MAX_OPEN_STREAMS, "health Watch and reflection streams (open without a token) at "
                                "once; beyond it RESOURCE_EXHAUSTED (Health.Check is never refused)",
                                min=1, max=1024)  # fmt: skip
    max_stream_items: int = opt(d.MAX_STREAM_ITEMS, "items in one BulkSetImages stream", min=1)
    max_list_items: int = opt(d.MAX_LIST_ITEMS, "lines of one image list (PAI set filelist); a longer list is "
                              "refused before any image is read", min=1)  # fmt: skip
    max_message_bytes: int = opt(64 << 20, "largest request message", min=1 << 16, max=1 << 30)
    max_image_bytes: int = opt(d.MAX_IMAGE_BYTES, "largest encoded image", min=1024)
    max_image_pixels: int = opt(d.MAX_IMAGE_PIXELS, "largest image (width x height) decoded", min=1)
    max_aspect_ratio: float = opt(d.MAX_ASPECT_RATIO, "longest side over shortest side of an image, beyond it "
                                  "IMAGE_SHAPE_INVALID", min=1.0)  # fmt: skip
    decode_budget_pixels: int = opt(d.DECODE_BUDGET_PIXELS, "decoded pixels in flight across threads (bounds memory)",
                                    min=1_000_000)  # fmt: skip
    max_top_k: int = opt(d.MAX_TOP_K, "largest top_k of a search", min=1, max=100_000)
    max_embed_images: int = opt(d.MAX_EMBED_IMAGES, "images in one Embed call", min=1, max=100_000)
    hnsw_threshold: int = opt(d.HNSW_THRESHOLD, "live images from which a database also gets an HNSW graph; "
                              "0 = exact only", min=0)  # fmt: skip
    hnsw_connectivity: int = opt(d.HNSW_CONNECTIVITY, "HNSW graph degree (usearch connectivity)", min=2, max=256)
    hnsw_expansion_add: int = opt(d.HNSW_EXPANSION_ADD, "HNSW expansion while building", min=8, max=4096)
    hnsw_expansion_search: int = opt(d.HNSW_EXPANSION_SEARCH, "HNSW expansion while searching (recall against speed)",
                                     min=8, max=4096)  # fmt: skip
    hnsw_rerank: int = opt(d.HNSW_RERANK, "HNSW candidates per result re-scored exactly (more: recall where the "
                           "graph's compact vectors blur near neighbours)", min=1, max=100)  # fmt: skip
    hnsw_dtype: str = opt(d.HNSW_DTYPE, "storage of the HNSW graph's vectors (bf16 and i8 have native dot products "
                          "on CPUs with AVX-512 BF16 / VNNI)", choices=d.HNSW_DTYPES)  # fmt: skip
    dedup_exact_max_images: int = opt(d.DEDUP_EXACT_MAX_IMAGES, "FindDuplicates compares every pair of images up to "
                                      "this many; above, each image's HNSW neighbours", min=0)  # fmt: skip
    dedup_block_seconds: float = opt(d.DEDUP_BLOCK_SECONDS, "FindDuplicates works in blocks of about this many "
                                     "seconds (checkpointed after each)", min=0.01, max=60.0)  # fmt: skip
    dedup_max_pairs: int = opt(d.DEDUP_MAX_PAIRS, "pairs a FindDuplicates job may find before it stops and asks "
                               "for a higher threshold", min=1)  # fmt: skip
    max_operations: int = opt(d.MAX_OPERATIONS, "long-running operations (FindDuplicates) running at once",
                              min=1, max=64)  # fmt: skip
    operation_retention_s: float = opt(d.OPERATION_RETENTION_S, "a finished long-running operation (its state and "
                                       "results: FindDuplicates' clusters) is removed this many seconds after it "
                                       "ended; 0 = kept until DeleteOperation", min=0.0)  # fmt: skip
    reindex_worker: str = opt(d.REINDEX_WORKER, "where a reindex embeds on a CPU: process = a child process at idle "
                              "priority with its own interpreter lock (faster beside other calls; it starts in a few "
                              "seconds); inline = the server's own model workers (always so on a GPU)",
                              choices=d.REINDEX_WORKERS)  # fmt: skip
    reindex_worker_idle_s: float = opt(d.BACKGROUND_IDLE_S, "seconds a reindex's child process is kept after its "
                                       "last page (a second reindex then starts at once)", min=0.0)  # fmt: skip
    keep: str = opt(
        d.KEEP,
        "what a new database keeps of each image unless CreateDatabase says: none, thumbnail "
        "(re-embeds within cosine 0.995; lets a new model re-index it) or original",
        choices=d.KEEP_POLICIES,
    )
    images_dir: Path | None = opt(None, "where kept images live (default: <data-dir>/images; with --index milvus, a "
                                  "directory every replica shares)")  # fmt: skip
    image_sweep_interval_s: float = opt(d.KEEP_SWEEP_INTERVAL_S, "with --index milvus: remove kept images no row "
                                        "names this often (seconds; 0 = never); the built-in store frees them as "
                                        "images go", min=0.0)  # fmt: skip
    grace_s: float = opt(d.GRACE_S, "seconds in-flight calls get to finish at shutdown", min=0.0)
    retry_window: int = opt(d.RETRY_WINDOW, "request ids remembered per database, so a retried write is applied once "
                            "(forgotten early when the image they wrote is deleted)", min=1)  # fmt: skip
    # Durability (README: "Where your data lives").
    persist: bool = opt(True, "keep databases on disk; --no-persist keeps them in memory only")
    fsync: str = opt(d.FSYNC, "when an acknowledged write reaches the disk", choices=FSYNC_MODES)
    fsync_interval_ms: float = opt(d.FSYNC_INTERVAL_MS, "batch mode: fsync the log at least this often", min=0.1)
    snapshot_interval_s: float = opt(600.0, "seconds between automatic snapshots; 0 = on request and at shutdown",
                                     min=0.0, flag="--snapshot-interval")  # fmt: skip
    root: str | None = opt(None, "oss://bucket/prefix/: mirror snapshots and ship the log there")
    oss_endpoint: str | None = opt(None, "OSS endpoint URL", env=oss.ENDPOINT_ENV)
    oss_allow: str | None = opt(None, "comma-separated oss://bucket/prefix/ list: the only places oss:// "
                                "exports, imports, PAI roots and images may use (default: --root, if set; else none)",
                                )  # fmt: skip
    oss_endpoint_allow: str | None = opt(None, "comma-separated OSS endpoints a request (PAI init hosts) may name, "
                                         "besides --oss-endpoint; a * host (https://*.aliyuncs.com) matches only "
                                         "public addresses, so list loopback or private ones exactly")  # fmt: skip
    oss_access_key_id: str | None = field(default=None, repr=False, metadata={"env_only": oss.KEY_ID_ENV})
    oss_access_key_secret: str | None = field(default=None, repr=False, metadata={"env_only": oss.SECRET_ENV})
    oss_credentials_file: Path | None = opt(None, f"file of {oss.KEY_ID_ENV}=... / {oss.SECRET_ENV}=... lines, read "
                                            f"when {oss.KEY_ID_ENV} / {oss.SECRET_ENV} are not set")  # fmt: skip
    oss_path_style: bool = opt(False, "path-style OSS URLs (S3-protocol test servers)", env=oss.PATH_STYLE_ENV)
    oss_retries: int = opt(oss.DEFAULT_RETRIES, "times an OSS request answered 500/502/503/504 is sent again "
                           f"(backoff {oss.DEFAULT_RETRY_BACKOFF_S:g} s, doubling)", min=0, max=10)  # fmt: skip
    ship_interval_s: float = opt(d.SHIP_INTERVAL_S, "seconds between log uploads to the OSS root", min=0.01,
                                 flag="--ship-interval")  # fmt: skip
    repair: bool = opt(False, "start despite a damaged log or snapshot: drop the damage and log what went")
    snapshot_check: str = opt("background", "when start-up checks the float32 re-rank copies of i8 databases (most "
                              "of a snapshot's bytes) against their checksums: background = while serving, and "
                              "damage found stops the server as it would stop start-up; start = before serving "
                              "(always so with --repair)", choices=("background", "start"))  # fmt: skip
    # Throughput: micro-batching and one thread budget (README: "Serving performance").
    batch_wait_ms: float = opt(d.BATCH_WAIT_MS, "once a batch has a request, wait at most this long for more",
                               min=0.0, max=1000.0)  # fmt: skip
    threads: int = opt(0, "CPU threads for compute (model, decoding, search kernels); 0 = one per usable core",
                       min=0, max=1024)  # fmt: skip
    model_workers: int = opt(0, "model calls run side by side; 0 = one per --threads on CPU (single-threaded "
                             "calls in parallel beat one call over all cores: bench/model_exec.py --workers), "
                             "1 on a GPU", min=0, max=256)  # fmt: skip
    torch_threads: int = opt(0, "torch intra-op threads of each model call; 0 = --threads / --model-workers",
                             min=0, max=1024)  # fmt: skip
    preprocess_threads: int = opt(0, "image decoding threads for batches and bulk streams; 0 = --threads",
                                  min=0, max=1024)  # fmt: skip
    kernel_threads: int = opt(0, "threads of one search kernel call; 0 = --threads", min=0, max=1024)
    cpu_exec: str = opt(d.CPU_EXEC, "how the model runs on CPU (bench/model_exec.py): auto = bf16 where the CPU has "
                        "native bf16 (AVX-512 BF16/AMX), else frozen", choices=CPU_EXEC_CHOICES)  # fmt: skip
    # Safety: tokens and TLS (README: "Securing a server").
    token_file: Path | None = opt(None, "file of accepted tokens, one per line (# comments); re-read when it "
                                  "changes, so tokens rotate without a restart; adds to LOOKALIKE_TOKEN")  # fmt: skip
    pai_init_shared: bool = opt(False, "without tokens, PAI init sets one OSS root and credentials for every client "
                                "(single-tenant; with tokens, init applies to the caller's token only)")  # fmt: skip
    open_health: bool = opt(True, "health checks and reflection answer without a token (probes, grpcurl)")
    open_metrics: bool = opt(False, "the metrics endpoint answers without a token; by default it needs one "
                             "('Authorization: Bearer', or the basic-auth password) when tokens are set")  # fmt: skip
    tls_cert: Path | None = opt(None, "PEM certificate chain: serve gRPC (and metrics) over TLS; needs --tls-key")
    tls_key: Path | None = opt(None, "PEM private key of --tls-cert")
    tls_client_ca: Path | None = opt(None, "PEM CA bundle: require client certificates signed by it (mutual TLS)")
    # Observability (README: "Monitoring").
    metrics_port: int | None = opt(None, "Prometheus /metrics HTTP port; off by default, 0 picks a free one",
                                   min=0, max=65535)  # fmt: skip
    metrics_host: str | None = opt(None, "address of the metrics endpoint (default: --host)")
    # -- where the index lives (built-in store, or Milvus for stateless replicas) --------------
    index: str = opt("builtin", "index backend: builtin (this machine: WAL + snapshots) or milvus (shared by "
                     "replicas)", choices=("builtin", "milvus"))  # fmt: skip
    milvus_uri: str | None = opt(None, "Milvus address with --index milvus, e.g. http://milvus:19530")
    milvus_token: str | None = field(default=None, repr=False, metadata={"env_only": "LOOKALIKE_MILVUS_TOKEN"})
    milvus_token_file: Path | None = opt(None, "file holding the Milvus token (user:password or API key), read when "
                                         "LOOKALIKE_MILVUS_TOKEN is not set")  # fmt: skip
    milvus_db: str = opt("", "Milvus database (empty: Milvus' default database)")
    milvus_prefix: str = opt(d.MILVUS_PREFIX, "prefix of the Milvus collections this service owns")
    milvus_index: str = opt(d.MILVUS_INDEX, "Milvus index of each collection: FLAT (exact), HNSW, or AUTOINDEX",
                            choices=d.MILVUS_INDEX_TYPES)  # fmt: skip
    milvus_hnsw_m: int = opt(d.MILVUS_HNSW_M, "M of Milvus' HNSW index in new collections (--hnsw-connectivity is "
                             "the built-in graph's)", min=2, max=2048)  # fmt: skip
    milvus_metric: str = opt(d.MILVUS_METRIC, "Milvus metric of new collections; vectors are unit length, so IP and "
                             "COSINE both rank by cosine", choices=("IP", "COSINE"))  # fmt: skip
    milvus_consistency: str = opt(d.MILVUS_CONSISTENCY, "Milvus consistency level of reads (Strong: every replica sees "
                                  "every acknowledged write)",
                                  choices=("Strong", "Bounded", "Session", "Eventually"))  # fmt: skip
    milvus_timeout_s: float = opt(d.MILVUS_TIMEOUT_S, "seconds a Milvus call may take before UNAVAILABLE",
                                  min=0.1, max=600.0)  # fmt: skip

    def __post_init__(self) -> None:
        self._check_models()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None:
                continue
            if "choices" in meta and value not in meta["choices"]:
                raise ValueError(f"{_flag(f)} must be one of {', '.join(meta['choices'])}, not {value!r}")
            if "min" in meta and value < meta["min"]:
                raise ValueError(f"{_flag(f)} must be at least {meta['min']}, not {value}")
            if "max" in meta and value > meta["max"]:
                raise ValueError(f"{_flag(f)} must be at most {meta['max']}, not {value}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both (PEM files) or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")
        if self.index == "milvus" and not self.milvus_uri:
            raise ValueError("--index milvus needs --milvus-uri (e.g. http://milvus:19530)")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", self.milvus_prefix):
            raise ValueError(f"--milvus-prefix must be letters, digits or '_' (at most 32), not {self.milvus_prefix!r}")
        if self.root is not None and not self.root.startswith("oss://"):
            raise ValueError(f"--root must be oss://bucket/prefix/ (local data lives in --data-dir), not {self.root!r}")
        try:
            self.boundaries()
        except ValueError as exc:
            raise ValueError(f"--oss-allow / --oss-endpoint-allow: {exc}") from None

    def boundaries(self) -> Boundaries:
        """Where a request may make the server read, write and connect (``server/core/locations.py``)."""
        root = self.export_root if self.export_root is not None else self.data_dir / "exports"
        allow = self.oss_allow if self.oss_allow is not None else self.root
        return Boundaries.build(root, allow, self.oss_endpoint, self.oss_endpoint_allow)

    def milvus_secret(self) -> str:
        """The Milvus token: ``LOOKALIKE_MILVUS_TOKEN``, else the first line of ``--milvus-token-file``."""
        if self.milvus_token:
            return self.milvus_token
        if self.milvus_token_file is not None:
            return (self.milvus_token_file.read_text().strip().splitlines() or [""])[0].strip()
        return ""

    # -- models ----------------------------------------------------------------------------------------
    def _check_models(self) -> None:
        """Normalise ``model`` (a Path, or a list from the repeated flag) to its comma-separated text, and check what
        needs no file: entries, names, a name given twice. Files are checked at start-up (model_sources)."""
        if isinstance(self.model, (list, tuple)):
            object.__setattr__(self, "model", ",".join(str(m) for m in self.model) or None)
        elif isinstance(self.model, Path):
            object.__setattr__(self, "model", str(self.model))
        named = [name for name, _ in self.model_specs() if name]
        twice = sorted({n for n in named if named.count(n) > 1})
        if twice:
            raise ValueError(f"--model names {', '.join(twice)} more than once: give each model its own NAME")
        if self.default_model is not None and not valid_model_name(self.default_model):
            raise ValueError(f"--default-model must be a model name ({MODEL_NAME_RULE}), not {self.default_model!r}")

    def model_specs(self) -> list[tuple[str, str]]:
        """``(name, path)`` of each --model entry, name "" for a bare PATH (``models.parse_model_specs``)."""
        return parse_model_specs(self.model)

    def model_sources(self) -> list[ModelSource]:
        """The model files to serve, in order: each --model entry, then each *.pt of --models-dir; empty: the
        embedded default. Checked when the server starts (``models.model_sources``): ValueError naming the option."""
        return model_sources(self.model_specs(), self.models_dir, self.default_model)

    @property
    def fsync_interval_s(self) -> float:
        return self.fsync_interval_ms / 1000.0

    def model_batch(self, device: str, workers: int | None = None) -> int:
        """``--max-batch``, or the measured default for ``device`` (bench/serve.py, bench/model_exec.py) and a model
        of ``workers`` model workers (default: all of them)."""
        if self.max_batch is not None:
            return self.max_batch
        if device.startswith("cuda"):
            return GPU_MAX_BATCH
        workers = self.workers_for(device) if workers is None else workers
        return CPU_MAX_BATCH_PER_WORKER if workers > 1 else CPU_MAX_BATCH

    @property
    def batch_wait_s(self) -> float:
        return self.batch_wait_ms / 1000.0

    def workers_for(self, device: str) -> int:
        """Model workers: ``--model-workers``, else one per thread of the budget on CPU and one on a GPU."""
        if self.model_workers:
            return self.model_workers
        return 1 if device.startswith("cuda") else self._total_threads()

    def _total_threads(self) -> int:
        return self.threads or d.usable_cores()

    def thread_budget_for(self, device: str) -> dict[str, int]:
        """Threads per part: each part defaults to the whole budget, since they rarely run at full load together;
        the model's share is split between its workers."""
        total = self._total_threads()
        workers = self.workers_for(device)
        return {
            "model_workers": workers,
            "torch": self.torch_threads or max(1, total // workers),
            "preprocess": self.preprocess_threads or total,
            "kernel": self.kernel_threads or total,
            "grpc": self.max_workers,
        }

    @property
    def thread_budget(self) -> dict[str, int]:
        """The budget on the configured device (CPU when none is named)."""
        return self.thread_budget_for(self.device or "cpu")

    @property
    def max_workers(self) -> int:
        """gRPC threads: every admitted call has one (health and reflection streams included), and a few stay
        free for Health.Check and refusals."""
        return self.max_inflight + self.max_streams + self.max_open_streams + d.SPARE_GRPC_THREADS

    # -- flags and environment -------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        env_only = [f.metadata["env_only"] for f in dataclasses.fields(cls) if "env_only" in f.metadata]
        note = f"Read from the environment only (never a flag, which `ps` would show): {', '.join(env_only)}."
        parser.epilog = f"{parser.epilog} {note}" if parser.epilog else note
        for f in dataclasses.fields(cls):
            if "env_only" in f.metadata:  # the flag is refused with where to put the value
                parser.add_argument(_flag(f), dest=REFUSED + f.name, default=None, help=argparse.SUPPRESS)
                continue
            env = _env(f)
            default = f.default
            kind = _kind(f)
            if kind is bool:
                group = parser.add_mutually_exclusive_group()
                state = "on" if default else "off"
                group.add_argument(_flag(f), dest=f.name, action="store_true", default=None,
                                   help=f"{f.metadata['help']} (env {env}; default {state})")  # fmt: skip
                group.add_argument("--no-" + _flag(f)[2:], dest=f.name, action="store_false", help=argparse.SUPPRESS)
                continue
            shown = "none" if default is None else default
            parser.add_argument(_flag(f), dest=f.name, default=None, metavar=f.name.upper(),
                                action="append" if f.metadata.get("repeat") else "store",
                                help=f"{f.metadata['help']} (env {env}; default {shown})")  # fmt: skip
        parser.add_argument("--in-memory", dest="persist", action="store_false", help=argparse.SUPPRESS)

    @classmethod
    def from_sources(
        cls, args: argparse.Namespace | None = None, environ: dict[str, str] | None = None
    ) -> ServerConfig:
        """Flags over environment over defaults; raises ValueError naming the option on a bad value."""
        environ = dict(os.environ if environ is None else environ)
        for f in dataclasses.fields(cls):
            if "env_only" in f.metadata and getattr(args, REFUSED + f.name, None) is not None:
                file = f" or --{f.name.replace('_', '-')}-file" if f.name == "milvus_token" else ""
                raise ValueError(f"{_flag(f)} is not accepted as a flag (`ps` would show it to every user): set "
                                 f"{f.metadata['env_only']} in the environment{file} instead")  # fmt: skip
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if "env_only" in f.metadata:
                values[f.name] = environ.get(f.metadata["env_only"]) or None
                continue
            raw = getattr(args, f.name, None) if args is not None else None
            source = _flag(f)
            if raw is None and _env(f) in environ and environ[_env(f)] != "":
                raw, source = environ[_env(f)], _env(f)
            if raw is None:
                continue
            values[f.name] = _convert(f, raw, source)
        return cls(**values)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _env(f: dataclasses.Field) -> str:
    return f.metadata.get("env") or "LOOKALIKE_" + _flag(f)[2:].replace("-", "_").upper()


def _kind(f: dataclasses.Field) -> type:
    text = str(f.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("Path", Path)):
        if text.startswith(name):
            return kind
    return str


def _convert(f: dataclasses.Field, raw: Any, source: str) -> Any:
    kind = _kind(f)
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError
            return lowered in ("1", "true", "yes", "on")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
    except ValueError:
        raise ValueError(f"{source}={raw!r} is not a valid {kind.__name__} for {_flag(f)}") from None
    return raw
