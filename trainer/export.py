"""Export a trained encoder as the server's embedder file (``epoch_{N}_export.pt``).

TorchScript with its preprocessing contract inside (``lookalike.modelfile``). The scripted module
maps a normalised float batch ``[N, 3, S, S]`` to float32 features ``[N, D]`` (not L2-normalised;
the server does that). It casts its input to its own parameter dtype first, so:

- an fp32 export takes any float input;
- an fp16 export (``fp16=True``: weights halved, ``precision="fp16"`` in the metadata) takes float32
  input too and runs in half precision where the device supports it (GPU). On CPU, where half
  kernels are slow or missing, the server may upcast it with ``module.float()``; the cast inside
  follows, and the output is float32 either way.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lookalike.trainer.methods.base import SSLMethod
from torch import nn

from lookalike.modelfile import EmbedderMeta, load_embedder, quiet_torchscript, save_embedder

# Tiers of an export (trainer/tiers.py) are measured on the user's own held-out images when at least this
# many are readable (fewer give thresholds from a handful of pairs), on at most MAX_TIER_IMAGES of them.
MIN_TIER_IMAGES = 32
MAX_TIER_IMAGES = 128


class ExportedEmbedder(nn.Module):
    """Serving wrapper: input cast to the weights' dtype, float32 output."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("dtype_probe", torch.zeros(1))  # follows .half() / .float() of the module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype_probe.dtype)  # [N, 3, S, S]
        return self.encoder(x).float()  # [N, D]


def export_filename(epoch: int) -> str:
    """File name of the export after ``epoch``: ``epoch_{N}_export.pt`` (as PAI names them)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return f"epoch_{epoch}_export.pt"


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace ``SyncBatchNorm`` (from DDP training) by plain ``BatchNorm2d``, which scripts and runs on CPU."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = _plain_batchnorm(module)
        if module.affine:
            bn.weight = module.weight
            bn.bias = module.bias
        bn.running_mean = module.running_mean
        bn.running_var = module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for child_name, child in module.named_children():
        module.add_module(child_name, revert_sync_batchnorm(child))
    return module


def _plain_batchnorm(sync: nn.SyncBatchNorm) -> nn.Module:
    args = (sync.num_features, sync.eps, sync.momentum, sync.affine, sync.track_running_stats)
    if hasattr(sync, "act") and hasattr(sync, "drop"):  # timm's SyncBatchNormAct: BN, dropout, activation
        from timm.layers import BatchNormAct2d

        bn_act = BatchNormAct2d(*args)
        bn_act.act, bn_act.drop = sync.act, sync.drop
        return bn_act
    return nn.BatchNorm2d(*args)


def _to_torchscript(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Script the module; trace it when scripting fails (shapes other than the batch are then fixed)."""
    with quiet_torchscript():
        try:
            return torch.jit.script(module)
        except Exception as script_error:  # TorchScript raises many types for unsupported Python
            with torch.no_grad():
                traced = torch.jit.trace(module, example, check_trace=False)
                more = torch.cat([example, example[:1]])  # another batch size must work too
                if not torch.allclose(traced(more), module(more), atol=1e-4, rtol=1e-3):
                    raise ValueError(
                        f"{type(module).__name__} can neither be scripted ({script_error}) nor traced reliably"
                    ) from script_error
            return traced


def export_embedder(
    method_or_module: SSLMethod | nn.Module,
    path: str | Path,
    *,
    input_size: int,
    resize_size: int | None = None,
    resize_mode: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    model_name: str,
    fp16: bool = False,
    extra: dict[str, Any] | None = None,
    verify: bool = True,
) -> Path:
    """Write ``method.embedder()`` (or a bare encoder) to ``path`` as an embedder file; return the path.

    Args:
        method_or_module: a trained :class:`SSLMethod`, or any module mapping images to ``[N, D]``.
        input_size: side of the square crop the model sees at serving time.
        resize_size: shorter side before the center crop; default ``round(input_size * 256 / 224)``.
        resize_mode: how the server fits an image to the input (``lookalike.modelfile``); default: its default.
        mean, std: input normalisation; default the method's ``default_mean`` / ``default_std``
            (required for a bare module).
        model_name: stored in the metadata (e.g. ``"mocov2-resnet50-epoch_10"``).
        fp16: store half-precision weights (``precision="fp16"``).
        extra: free-form JSON-serialisable metadata (method, backbone, epoch, ...).
        verify: load the file back and check it reproduces the in-memory embeddings.
    """
    if isinstance(method_or_module, SSLMethod):
        encoder = method_or_module.embedder()
        mean = mean if mean is not None else method_or_module.default_mean
        std = std if std is not None else method_or_module.default_std
        extra = {"method": method_or_module.name, **(extra or {})}
    else:
        encoder = method_or_module
    if mean is None or std is None:
        raise ValueError("pass mean and std (three floats each) when exporting a bare module")
    if input_size <= 0:
        raise ValueError(f"input_size must be > 0, got {input_size}")
    resize_size = resize_size if resize_size is not None else round(input_size * 256 / 224)

    trained = ExportedEmbedder(copy.deepcopy(encoder)).cpu().float().eval()
    example = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = trained(example)  # [2, D], the trained encoder in fp32, eval mode
    wrapper = ExportedEmbedder(revert_sync_batchnorm(trained.encoder))
    wrapper.requires_grad_(False)
    if reference.dim() != 2:
        raise ValueError(f"the encoder must return [N, D] features, got shape {tuple(reference.shape)}")
    if fp16:
        wrapper = wrapper.half()
    meta = EmbedderMeta(
        model_name=model_name,
        output_dim=int(reference.shape[1]),
        input_size=input_size,
        resize_size=resize_size,
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
        precision="fp16" if fp16 else "fp32",
        extra=dict(extra or {}),
        **({} if resize_mode is None else {"resize_mode": resize_mode}),
    )
    scripted = _to_torchscript(wrapper, example)
    out = save_embedder(scripted, path, meta)
    if verify:
        _verify(out, example, reference, fp16)
    return out


def _verify(path: Path, example: torch.Tensor, reference: torch.Tensor, fp16: bool) -> None:
    module, _ = load_embedder(path)
    if fp16:  # check the CPU fallback path: upcast weights, compare against fp32 with half rounding
        module = module.float()
    with torch.no_grad():
        got = module(example)
    if got.shape != reference.shape:
        raise ValueError(f"{path}: exported output shape {tuple(got.shape)} != trained {tuple(reference.shape)}")
    error = float((got - reference).norm() / reference.norm().clamp_min(1e-12))  # relative, whole batch
    if not error <= (1e-2 if fp16 else 1e-5):
        raise ValueError(
            f"{path}: the exported module does not reproduce the trained encoder's embeddings "
            f"(relative error {error:.3g}); please report it with the backbone name"
        )


def calibrate_export(
    path: str | Path, images: Sequence[Any] | None = None, *, seed: int = 0, device: str = "cpu"
) -> EmbedderMeta:
    """Store similarity tiers in an export (``lookalike.trainer.tiers``), after any domain centre.

    Measured on ``images`` (the self-check's held-out images: the user's own domain, never trained on),
    the first :data:`MAX_TIER_IMAGES` of them, when at least :data:`MIN_TIER_IMAGES` are distinct;
    otherwise on the built-in synthetic set, as the default model is.
    """
    from lookalike.trainer.tiers import MIN_IMAGES, calibrate_model_file, distinct_images

    own = list(images or [])[:MAX_TIER_IMAGES]
    if len(own) >= max(MIN_TIER_IMAGES, MIN_IMAGES) and len(distinct_images(own)) >= MIN_TIER_IMAGES:
        return calibrate_model_file(path, own, seed=seed, source="held-out training images", device=device)
    return calibrate_model_file(path, None, seed=seed, device=device)
