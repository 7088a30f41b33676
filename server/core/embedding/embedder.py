"""The embedder: a model file (see lookalike.modelfile) behind a micro-batcher.

Images are decoded and preprocessed on the calling threads, then batched into one
``torch.inference_mode()`` call on CUDA when present, else CPU, in the execution mode chosen by
``lookalike.server.core.embedding.model_exec`` (``--cpu-exec``; bf16 where the CPU computes it natively).
Outputs are L2-normalised float32 so that inner product is cosine similarity.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lookalike.server.core.crop import Crop, draft_for, pixel_box
from lookalike.server.core.embedding.background import BACKGROUND_MODES, ChildEmbedder, InlineEmbedder
from lookalike.server.core.embedding.batcher import MicroBatcher
from lookalike.server.core.embedding.cancellation import track
from lookalike.server.core.embedding.images import PixelBudget, decode_image
from lookalike.server.core.embedding.model_exec import prepare as prepare_runner
from lookalike.server.core.errors import ErrorKind, LookalikeError
from lookalike.server.defaults import (
    BACKGROUND_IDLE_S,
    BATCH_WAIT_MS,
    CPU_EXEC,
    DECODE_BUDGET_PIXELS,
    GPU_MAX_BATCH,
    MAX_ASPECT_RATIO,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    REINDEX_WORKER,
    usable_cores,
)

from lookalike.modelfile import EmbedderMeta, load_embedder, output_vectors, preprocess

log = logging.getLogger(__name__)


DRAFT_MARGIN = 2  # JPEG draft decoding keeps this many times the pixels the resize needs


class Embedder:
    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str | None = None,
        max_batch: int = GPU_MAX_BATCH,
        max_wait_s: float = BATCH_WAIT_MS / 1000.0,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        preprocess_threads: int | None = None,
        max_aspect_ratio: float = MAX_ASPECT_RATIO,
        decode_budget_pixels: int = DECODE_BUDGET_PIXELS,
        cpu_exec: str = CPU_EXEC,
        model_workers: int = 1,
        model_threads: int | None = None,
        background: str = REINDEX_WORKER,
        background_idle_s: float = BACKGROUND_IDLE_S,
        background_workers: tuple[int, int] = (1, 0),
    ) -> None:
        """``background``: where work nobody waits on (a reindex) is embedded on a CPU: ``process`` (a child
        process at idle priority, ``background.py``, kept ``background_idle_s`` after use) or ``inline``.
        ``background_workers``: that child's model workers and their batch (0: ``max_batch``); it may have the
        whole server's, since at idle priority it only runs on what the server's own work leaves."""
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # What a child process needs to load this model exactly so (background.py): the CPU, its own workers.
        child_workers, child_batch = background_workers
        self.spec: dict[str, Any] = dict(
            model_path=str(model_path), device="cpu", max_batch=child_batch or max_batch, max_wait_s=max_wait_s,
            max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels, preprocess_threads=preprocess_threads,
            max_aspect_ratio=max_aspect_ratio, decode_budget_pixels=decode_budget_pixels, cpu_exec=cpu_exec,
            model_workers=max(1, child_workers), model_threads=model_threads,
        )  # fmt: skip
        if background not in BACKGROUND_MODES:
            raise ValueError(f"background must be one of {', '.join(BACKGROUND_MODES)}, not {background!r}")
        self._background_mode, self._background_idle_s = background, background_idle_s
        self._background: ChildEmbedder | InlineEmbedder | None = None
        self._background_lock = threading.Lock()
        module, meta = load_embedder(model_path, device=self.device)
        if self.device == "cpu":
            module = module.float()  # half convolutions are slow or missing on CPU
        self.module = module
        self.meta: EmbedderMeta = meta
        self._runner = prepare_runner(module, self.device, cpu_exec, meta.input_size)
        # JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps twice what the resize needs
        # (the shorter side at resize_size for the centre crop, both sides at input_size otherwise): a
        # 1600x1200 photo then decodes at 800x600, 2-3x less work. Twice, not once: the vectors then
        # stay within cosine 0.9996 of a full decode (at once, down to 0.9965 on 640x480 photos), the
        # same tolerance the model's execution modes keep, so stored vectors stay comparable.
        crop = meta.resize_mode == "shorter_then_center_crop"
        self._draft_size = DRAFT_MARGIN * (meta.resize_size if crop else meta.input_size)
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self._budget = PixelBudget(decode_budget_pixels)  # bounds decoded pixels in flight across threads
        self._pool = ThreadPoolExecutor(
            max_workers=preprocess_threads or usable_cores(), thread_name_prefix="preprocess"
        )
        # Model calls run side by side on ``model_workers`` threads, each with ``model_threads`` torch
        # threads (torch's thread count is per calling thread: each worker sets its own).
        self._batcher = MicroBatcher(
            self._forward, max_batch=max_batch, max_wait_s=max_wait_s, workers=model_workers,
            worker_init=(lambda: torch.set_num_threads(model_threads)) if model_threads else None,
        )  # fmt: skip
        probe = self._forward(np.zeros((1, 3, meta.input_size, meta.input_size), np.float32))
        if probe.shape != (1, meta.output_dim):
            raise LookalikeError(
                ErrorKind.FAILED_PRECONDITION,
                "MODEL_INVALID",
                f"model {meta.model_name} returned shape {tuple(probe.shape)} for one image, but its "
                f"metadata says output_dim={meta.output_dim}; re-export the model",
            )
        log.info("embedder %s ready on %s, %s (dim %d)", meta.model_name, self.device, self.execution, meta.output_dim)

    @property
    def batcher(self) -> MicroBatcher:
        """The micro-batcher, for metrics (batch sizes, queue depth)."""
        return self._batcher

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The decode pool (image work that releases the GIL: kept thumbnails are made on it too)."""
        return self._pool

    @property
    def dimension(self) -> int:
        return self.meta.output_dim

    @property
    def model_name(self) -> str:
        return self.meta.model_name

    @property
    def execution(self) -> str:
        """How the model runs: eager, frozen, bf16, ... on CPU; fp16 or fp32 on CUDA."""
        return self._runner.mode

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        y = self._runner.run(batch).cpu().numpy()  # TorchScript inference is safe from several threads
        if not np.isfinite(y).all():
            raise LookalikeError(ErrorKind.INTERNAL, "MODEL_OUTPUT_INVALID", "the model produced non-finite values")
        return output_vectors(y, self.meta)  # L2-normalised, minus the file's domain centre if it has one

    def prepare(
        self, data: bytes, *, field: str = "image", also: Callable[[Any], Any] | None = None, crop: Crop | None = None,
        crop_field: str = "crop",
    ) -> Any:  # fmt: skip
        """Decode and preprocess one encoded image -> [3, S, S] float32; with ``also``, (that, ``also(decoded)``):
        what else needs the decoded picture (a kept thumbnail) gets it without a second decode.

        ``crop`` (checked by ``core.crop.check_crop``): embed only that region of the upright image, rounded to
        whole pixels (CROP_INVALID, naming ``crop_field``, when it is under a few pixels on a side). JPEGs then
        decode at a draft scale that still leaves the region the pixels the resize needs."""
        img = decode_image(
            data,
            max_bytes=self.max_image_bytes,
            max_pixels=self.max_image_pixels,
            draft_size=draft_for(self._draft_size, crop),
            field=field,
            max_aspect_ratio=self.max_aspect_ratio,
            budget=self._budget,
        )
        if crop is not None:
            img = img.crop(pixel_box(crop, img.width, img.height, crop_field))
        array = preprocess(img, self.meta)
        return array if also is None else (array, also(img))

    def prepare_many(self, images: Sequence[bytes], *, field: str = "images",
                     also: Callable[[Any], Any] | None = None) -> list[Any]:  # fmt: skip
        """Preprocess in parallel; a bad image yields its error in place instead of raising (``also``: as in
        ``prepare``, pairs)."""

        def one(pair: tuple[bytes, str]) -> Any:
            try:
                if also is not None:
                    return self.prepare(pair[0], field=pair[1], also=also)
                return self.prepare(pair[0], field=pair[1])
            except LookalikeError as err:
                # The proto promises metadata["index"]: the position of the bad image in the call.
                err.metadata["index"] = pair[1].rsplit("[", 1)[-1].rstrip("]")
                err.metadata["field"] = field
                return err

        return list(self._pool.map(one, zip(images, [f"{field}[{i}]" for i in range(len(images))], strict=True)))

    def embed_prepared(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """[n] preprocessed images -> [n, D] unit vectors, batched with concurrent callers."""
        if not arrays:
            return np.zeros((0, self.dimension), np.float32)
        future = track(self._batcher.submit(np.stack(arrays)))
        try:
            return future.result()
        except CancelledError:
            raise LookalikeError(
                ErrorKind.UNAVAILABLE, "CANCELLED", "the call ended before its images were embedded"
            ) from None

    def embed(self, images: Sequence[bytes], *, field: str = "images", crop: Crop | None = None) -> np.ndarray:
        """[n] encoded images -> [n, D] unit vectors; ``crop`` (one image only): embed that region of it."""
        if crop is not None:
            if len(images) != 1:
                raise ValueError("a crop applies to one image")
            return self.embed_prepared([self.prepare(images[0], field=field, crop=crop)])
        if len(images) == 1:
            return self.embed_prepared([self.prepare(images[0], field=field)])
        prepared = self.prepare_many(images, field=field)
        for p in prepared:
            if isinstance(p, LookalikeError):
                raise p
        return self.embed_prepared(prepared)  # type: ignore[arg-type]

    def background(self) -> ChildEmbedder | InlineEmbedder:
        """This model for background work: in a child process at idle priority on a CPU with ``background=
        "process"``, else on this embedder's own workers (``submit(images) -> Future[Embedded]`` either way)."""
        with self._background_lock:
            if self._background is None:
                child = self._background_mode == "process" and self.device == "cpu"
                self._background = (ChildEmbedder(self.spec, self._background_idle_s) if child
                                    else InlineEmbedder(self))  # fmt: skip
            return self._background

    def close(self) -> None:
        if self._background is not None:
            self._background.close()
        self._batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
