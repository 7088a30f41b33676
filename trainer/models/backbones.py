"""Backbones: any timm model with its classifier removed, so ``forward`` returns pooled ``[N, F]`` features.

``pretrained`` is never a hub download: ``None`` (random init), ``"imagenet"`` (the packaged
EfficientNet-Lite0 weights, only for ``tf_efficientnet_lite0``), or a checkpoint path.
"""

from __future__ import annotations

import difflib
from typing import Any

from lookalike.trainer.models.pretrained import (
    EFFICIENTNET_LITE0_ARCH,
    PACKAGED_IMAGENET,
    load_backbone_checkpoint,
    load_efficientnet_lite0_imagenet,
)
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KNOWN_GOOD = (
    "resnet50",
    "deit_small_patch16_224",
    "tf_efficientnet_lite0",
    "vit_small_patch16_224",
    "resnet18",
)


def _unknown_backbone(name: str) -> ValueError:
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
    hint = f"did you mean {close}? " if close else ""
    return ValueError(
        f"unknown backbone {name!r}: {hint}any name from timm.list_models() works, e.g. {list(KNOWN_GOOD)}"
    )


def create_backbone(
    name: str,
    pretrained: str | None = None,
    *,
    image_size: int | None = None,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> tuple[nn.Module, int]:
    """Build ``timm.create_model(name, num_classes=0)``; return ``(module, num_features)``.

    Args:
        name: a timm model name (``timm.list_models()``).
        pretrained: ``None``, ``"imagenet"`` (packaged EfficientNet-Lite0, ``tf_efficientnet_lite0`` only)
            or a path to a checkpoint (see :func:`load_backbone_checkpoint`).
        image_size: input size for models built for one size (ViT, DeiT, Swin); ignored by CNNs.
        drop_path_rate: stochastic depth, for models that support it.
        kwargs: passed to ``timm.create_model`` (e.g. ``depth=2`` for a tiny test ViT).
    """
    import timm

    if not timm.is_model(name):
        raise _unknown_backbone(name)
    if pretrained == PACKAGED_IMAGENET and name != EFFICIENTNET_LITE0_ARCH:
        raise ValueError(
            f"offline ImageNet weights exist only for {EFFICIENTNET_LITE0_ARCH!r} (the packaged "
            f"EfficientNet-Lite0), not {name!r}; use backbone={EFFICIENTNET_LITE0_ARCH!r}, "
            "or pass a checkpoint path as pretrained"
        )
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    model = _create(name, image_size, kwargs)
    if pretrained == PACKAGED_IMAGENET:
        load_efficientnet_lite0_imagenet(model)
    elif pretrained is not None:
        load_backbone_checkpoint(model, pretrained)
    return model, int(model.num_features)


def _create(name: str, image_size: int | None, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if image_size is not None:
        try:
            return timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size, **kwargs)
        except TypeError as exc:  # CNNs take any size and have no img_size argument
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def backbone_mean_std(model: nn.Module) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Input normalisation the backbone's timm config expects (ImageNet's when it has none)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:  # grayscale configs
        return IMAGENET_MEAN, IMAGENET_STD
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def backbone_stages(model: nn.Module) -> tuple[list[str], list[nn.Module]]:
    """The backbone's top-level children in order, and its stages (the blocks between stem and head).

    timm names them ``blocks`` (EfficientNet, MobileNet, ViT), ``stages`` (ConvNeXt, RegNet, ...)
    or ``layer1``..``layer4`` (ResNet).
    """
    names = [name for name, _ in model.named_children()]
    for attr in ("blocks", "stages"):
        seq = getattr(model, attr, None)
        if isinstance(seq, nn.Sequential) and len(seq) > 0:
            return names, list(seq)
    layers = [getattr(model, n) for n in names if n.startswith("layer") and n[5:].isdigit()]
    return names, layers


def freeze_early_stages(model: nn.Module, trainable_stages: int) -> tuple[int, int]:
    """Freeze the stem and all but the last ``trainable_stages`` stages (``requires_grad = False``).

    What follows the stages (the last convolution, norm, pooling) keeps training. The frozen part
    then needs no backward pass, which is most of a CNN's training cost at high resolution (the
    early stages run at the largest feature maps). Returns ``(frozen, trainable)`` parameter counts.
    """
    if trainable_stages < 0:
        raise ValueError(f"train.trainable_stages must be >= 0 (or null: everything trains), got {trainable_stages}")
    names, stages = backbone_stages(model)
    if not stages:
        raise ValueError(
            f"train.trainable_stages: cannot find the stages of {type(model).__name__} "
            "(no `blocks`, `stages` or `layerN` children); set train.trainable_stages=null"
        )
    keep = {id(m) for m in stages[len(stages) - min(trainable_stages, len(stages)) :]}
    stage_ids = {id(m) for m in stages}
    container = next((n for n in names if n in ("blocks", "stages")), None)
    children = list(model.named_children())
    first_stage = next(i for i, (n, c) in enumerate(children) if n == container or id(c) in stage_ids)
    frozen_modules = [c for _, c in children[:first_stage]] + [m for m in stages if id(m) not in keep]  # stem
    frozen = 0
    for module in frozen_modules:
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return frozen, trainable
