"""The default of every server setting that code below the settings also uses, written once.

Plain constants and no imports beyond the standard library, so every layer may read it: ``server/config.py``
turns them into flags, environment variables and ``lookalike serve --help`` text, and the core and storage
modules use them as their constructors' defaults (tests and benchmarks build those without a
``ServerConfig``; the core never imports ``server/config.py``). It stays this small because every
``lookalike`` command, client ones included, builds the serve parser (``lookalike/cli.py``), so the
settings must not pull in torch, Pillow or usearch.

OSS defaults live in ``lookalike/oss.py``, the client the trainer and the CLI share.
"""

from __future__ import annotations

import os

# -- images (server/core/embedding/images.py, embedder.py) --------------------------------------
MAX_IMAGE_BYTES = 32 << 20  # largest encoded image
MAX_IMAGE_PIXELS = 64_000_000  # largest image (width x height) decoded
# Longest side over shortest side. Panoramas reach about 10:1; beyond this the image is a strip
# whose resized copy is mostly interpolation (and, unbounded, exhausted memory).
MAX_ASPECT_RATIO = 20.0
# Pixels decoded at once across all threads (about 4 bytes each while decoding, 3 after).
DECODE_BUDGET_PIXELS = 128_000_000

# -- model calls (server/core/embedding/embedder.py, batcher.py, model_exec.py) -----------------
GPU_MAX_BATCH = 32
CPU_MAX_BATCH = 4  # one model worker over all cores
CPU_MAX_BATCH_PER_WORKER = 1  # several single-threaded workers: each image its own call, in cache
BATCH_WAIT_MS = 2.0  # once a batch has a request, wait at most this long for more
CPU_EXEC = "auto"
CPU_EXEC_CHOICES = ("auto", "eager", "channels_last", "frozen", "bf16_autocast", "bf16")

# -- what one call may ask for (server/core/service.py Limits) ----------------------------------
MAX_TOP_K = 1000
MAX_EMBED_IMAGES = 256
MAX_STREAM_ITEMS = 1_000_000
RETRY_WINDOW = 100_000  # request ids remembered per database, so a retried write is applied once
MAX_LIST_ITEMS = 100_000  # lines of one image list (PAI set filelist), refused up front beyond it

# -- HNSW graphs (server/core/backends/builtin/hnsw.py; Milvus' HNSW index takes the expansions) -------
HNSW_THRESHOLD = 100_000  # live images from which a database gets a graph; 0 = never
HNSW_CONNECTIVITY = 24  # 1M x 384: recall@10 0.974-0.978 at expansion 80, where degree 16 needed 144 (README)
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 200  # recall@10 >= 0.95 on clustered data needs ~200 (64 gave 0.78)
HNSW_RERANK = 4  # candidates fetched per result, re-scored exactly
HNSW_DTYPE = "i8"  # at degree 24: 1.21-1.40x FAISS HNSW's QPS at recall 0.97 and 0.6 the f16 graph's bytes
HNSW_DTYPES = ("f32", "f16", "bf16", "i8")

# -- Milvus (server/core/backends/milvus/catalog.py, server/storage/milvus_store.py) -------------
MILVUS_INDEX = "HNSW"
MILVUS_HNSW_M = 16  # Milvus' HNSW M (its own graph, sized in deploy/CAPACITY.md)
MILVUS_INDEX_TYPES = ("FLAT", "HNSW", "AUTOINDEX")
MILVUS_METRIC = "IP"  # vectors are unit length: IP and COSINE both rank by cosine; IP skips a normalisation
MILVUS_PREFIX = "lookalike_"
MILVUS_CONSISTENCY = "Strong"
MILVUS_TIMEOUT_S = 10.0

# -- duplicates and operations (server/core/dedup/finder.py, server/core/operations.py) ----------
DEDUP_EXACT_MAX_IMAGES = 5_000_000  # up to this many images the self-join compares every pair; above, HNSW neighbours
DEDUP_GRAPH_NEIGHBOURS = 32  # HNSW neighbours checked per image above that size
DEDUP_BLOCK_SECONDS = 0.25  # one block of a duplicate job takes about this long (the longest it holds the CPU)
DEDUP_MAX_PAIRS = 50_000_000  # pairs a job may find (600 MB of checkpoints); beyond, the threshold is too low
MAX_OPERATIONS = 2  # long-running operations (FindDuplicates) running at once
OPERATION_RETENTION_S = 7 * 24 * 3600.0  # a finished operation (state, results) is removed this long after it ended
KEEP_POLICIES = ("none", "thumbnail", "original")
BACKGROUND_IDLE_S = 600.0  # a reindex's child embedding process is kept this long after its last page
REINDEX_WORKER = "process"  # a reindex embeds on a CPU in a child process at idle priority (background.py)
REINDEX_WORKERS = ("process", "inline")
KEEP = "thumbnail"  # what a database keeps of each image unless CreateDatabase says (none, thumbnail, original)
KEEP_SWEEP_INTERVAL_S = 3600.0  # Milvus replicas sweep the shared image store this often
KEEP_SWEEP_GRACE_S = 3600.0  # an image-store blob no row references is swept only after this long

# -- durability (server/core/backends/builtin/persistence.py, server/storage/wal.py) -------------
FSYNC = "batch"
FSYNC_MODES = ("always", "batch", "never")
FSYNC_INTERVAL_MS = 5.0
SHIP_INTERVAL_S = 1.0
GRACE_S = 5.0  # seconds in-flight calls get to finish at shutdown

# -- ports (server/transport/: admission.py, http_server.py, metrics.py) ------------------------
MAX_OPEN_STREAMS = 8  # health Watch + reflection streams (no token needed) at once
SPARE_GRPC_THREADS = 4  # gRPC threads beyond every limit: Health.Check and refusals run on them
HTTP_HEADER_TIMEOUT_S = 10.0  # a connection's request line and headers must arrive within this
HTTP_BODY_TIMEOUT_S = 60.0  # a request body must arrive within this (from its headers)
HTTP_KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
HTTP_MAX_CONNECTIONS = 0  # 0 = a quarter of the process' file descriptor limit


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a container's cpuset): every ``0 =``
    thread count's default."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
