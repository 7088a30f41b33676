"""Named methods: ``build_method("MOCO_R50" | "mocov2" | ..., backbone=..., pretrained=..., **options)``.

The PAI names are accepted as aliases. Options are the method class's keyword arguments (paper
notation, e.g. ``K``, ``m``, ``T`` for MoCo); an unknown option raises ``ValueError`` listing the
valid ones, so a typo in a config file never silently falls back to a default.
"""

from __future__ import annotations

import inspect
from typing import Any

from lookalike.trainer.methods.base import SSLMethod
from lookalike.trainer.methods.moby import MoBY
from lookalike.trainer.methods.moco import MoCo
from lookalike.trainer.methods.swav import SwAV

METHOD_ALIASES = {"MOCO_R50": "mocov2", "MOCO_TIMM": "moco_timm", "MOBY_TIMM": "moby", "SWAV_R50": "swav"}

# name -> (class, default backbone)
METHODS: dict[str, tuple[type[SSLMethod], str]] = {
    "mocov2": (MoCo, "resnet50"),
    "moco_timm": (MoCo, "tf_efficientnet_lite0"),
    "moby": (MoBY, "deit_small_patch16_224"),
    "swav": (SwAV, "resnet50"),
}


def method_names() -> list[str]:
    """Canonical names and PAI aliases, as accepted by :func:`build_method`."""
    return sorted(METHODS) + sorted(METHOD_ALIASES)


def canonical_name(name: str) -> str:
    """``"MOCO_R50"`` -> ``"mocov2"``; canonical names pass (case-insensitive); else ``ValueError``."""
    key = name.strip()
    if key.upper() in METHOD_ALIASES:
        return METHOD_ALIASES[key.upper()]
    if key.lower() in METHODS:
        return key.lower()
    raise ValueError(f"unknown method {name!r}; choose one of {method_names()}")


def method_options(name: str) -> dict[str, Any]:
    """Options of a method with their defaults (what ``**options`` of :func:`build_method` accepts)."""
    cls, _ = METHODS[canonical_name(name)]
    params = inspect.signature(cls.__init__).parameters
    skip = {"self", "backbone", "pretrained", "name"}
    return {k: p.default for k, p in params.items() if k not in skip}


def build_method(name: str, *, backbone: str | None = None, pretrained: str | None = None, **options: Any) -> SSLMethod:
    """Build a self-supervised method.

    Args:
        name: ``mocov2``, ``moco_timm``, ``moby``, ``swav`` or a PAI alias (``MOCO_R50``, ``MOCO_TIMM``,
            ``MOBY_TIMM``, ``SWAV_R50``).
        backbone: timm model name; default ResNet-50 (MoCo v2, SwAV), DeiT-S/16 (MoBY),
            ``tf_efficientnet_lite0`` (MoCo on timm).
        pretrained: ``None``, ``"imagenet"`` (packaged EfficientNet-Lite0 weights) or a checkpoint path.
        options: method hyper-parameters (see :func:`method_options`), e.g. ``K=8, image_size=32``.
    """
    canonical = canonical_name(name)
    cls, default_backbone = METHODS[canonical]
    valid = method_options(canonical)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {canonical!r}; valid options: {sorted(valid)}")
    return cls(backbone or default_backbone, pretrained, name=canonical, **options)
