"""What gets evaluated: an embedder file, the server's default model, or raw pixels.

Every embedder maps PIL images to L2-normalised float32 vectors, so the metrics compare them on
equal terms. Model files go through ``lookalike.modelfile.preprocess`` exactly as the server
does, so an evaluation number is the number the deployed model would get.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from lookalike.modelfile import EmbedderMeta, load_embedder, output_vectors, preprocess

PIXELS = "pixels"
DEFAULT = "default"


class Embedder(Protocol):
    name: str

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``[N, D]`` float32, rows L2-normalised."""
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class PixelEmbedder:
    """Raw pixels as the vector: the baseline any trained encoder must beat.

    RGB, resized (stretched) to ``size`` x ``size``; ``size=None`` takes the images' own size
    at the first call when they all share one (Fashion-MNIST: 28 x 28 -> 2352-d), else 32, and
    keeps it for later calls so queries (e.g. cropped copies) match the gallery's dimension.
    """

    def __init__(self, size: int | None = None) -> None:
        self.size = size
        self.name = PIXELS if size is None else f"{PIXELS}{size}"

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if self.size is None:
            sizes = {im.size for im in images}
            only = next(iter(sizes)) if len(sizes) == 1 else None
            self.size = only[0] if only is not None and only[0] == only[1] else 32
        size = self.size
        rows = [
            np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32).ravel()
            for im in images
        ]
        return _normalise(np.stack(rows))


class ModelFileEmbedder:
    """A Lookalike model file, preprocessed as the server does, batched, on CPU or GPU.

    ``plain=True`` leaves out the file's domain centre (the self-check ranks encoders on plain vectors).
    """

    def __init__(
        self, path: str | Path, *, device: str = "cpu", batch_size: int = 128, threads: int = 4, plain: bool = False
    ) -> None:
        module, meta = load_embedder(path, device=device)
        self.output_meta = dataclasses.replace(meta, center=None) if plain else meta
        if meta.precision == "fp16" and device == "cpu":
            module = module.float()  # half kernels are slow or missing on CPU; the module casts inside
        self.module, self.meta = module, meta
        self.device, self.batch_size, self.threads = device, batch_size, threads
        self.name = meta.model_name

    def _prep(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.meta)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        with ThreadPoolExecutor(max_workers=self.threads) as pool, torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = np.stack(list(pool.map(self._prep, images[start : start + self.batch_size])))
                x = torch.from_numpy(batch).to(self.device)  # [B, 3, S, S]
                out.append(self.module(x).float().cpu().numpy())  # [B, D]
        return output_vectors(np.concatenate(out), self.output_meta)  # as the server (the centre unless plain)


def default_model_file(cache_dir: Path | None = None) -> Path:
    """The server's default model file (EfficientNet-Lite0, ImageNet), built once into a cache.

    Uses the server's own converter when the server package is installed, so the number is the
    one ``lookalike serve`` without ``--model`` gets; else exports the trainer's timm
    EfficientNet-Lite0 with the same packaged weights.
    """
    try:
        from lookalike.server.core.embedding.default_model import default_model_path
    except ImportError:
        default_model_path = None
    if default_model_path is not None:
        return default_model_path(cache_dir)
    from lookalike.trainer.export import export_embedder
    from lookalike.trainer.models.pretrained import (
        EFFICIENTNET_LITE0_INPUT_SIZE,
        EFFICIENTNET_LITE0_MEAN,
        EFFICIENTNET_LITE0_RESIZE_SIZE,
        EFFICIENTNET_LITE0_STD,
        efficientnet_lite0_imagenet,
    )

    base = cache_dir or Path.home() / ".cache" / "lookalike"
    path = base / "models" / f"efficientnet-lite0-imagenet-timm-{torch.__version__}.pt"
    if not path.is_file():
        export_embedder(
            efficientnet_lite0_imagenet(),
            path,
            input_size=EFFICIENTNET_LITE0_INPUT_SIZE,
            resize_size=EFFICIENTNET_LITE0_RESIZE_SIZE,
            mean=EFFICIENTNET_LITE0_MEAN,
            std=EFFICIENTNET_LITE0_STD,
            model_name="efficientnet-lite0-imagenet",
        )
    return path


def open_embedder(
    spec: str,
    *,
    device: str = "cpu",
    batch_size: int = 128,
    cache_dir: Path | None = None,
    pixel_size: int | None = None,
    input_size: int | None = None,
    resize_size: int | None = None,
) -> Embedder:
    """``"pixels"``, ``"default"`` or a model file path -> an embedder.

    ``input_size`` re-targets a model file to another input resolution (resize and crop scaled
    alike), e.g. to evaluate the 224-px default model on 28-px images at a lower cost.
    ``resize_size`` overrides the shorter side before the centre crop: equal to the input size,
    the model sees the whole image, as an export made with ``export.resize_size`` equal to
    ``export.input_size`` does; comparisons between models need the same preprocessing.
    """
    if spec == PIXELS:
        return PixelEmbedder(pixel_size)
    path = default_model_file(cache_dir) if spec == DEFAULT else Path(spec)
    emb = ModelFileEmbedder(path, device=device, batch_size=batch_size)
    meta = emb.meta
    size = input_size or meta.input_size
    resize = resize_size or round(size * meta.resize_size / meta.input_size)
    if resize < size:
        raise ValueError(f"--resize-size {resize} is smaller than the input size {size}; it must be >= it")
    if (size, resize) != (meta.input_size, meta.resize_size):
        emb.meta = EmbedderMeta(**{**meta.__dict__, "input_size": size, "resize_size": resize})
        emb.name = f"{emb.name}@{size}" + ("" if resize_size is None else f"/{resize}")
    return emb
