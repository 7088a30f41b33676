"""The interface every self-supervised method offers the training loop.

The loop, per step::

    views = [crops for (size, n, scale) in method.crops for each of the n crops]  # normalised [B,3,S,S]
    out = ddp_model(views)             # method.forward, maybe wrapped in DistributedDataParallel
    out["loss"].backward(); optimizer.step(); optimizer.zero_grad()
    method.on_after_step(step, total_steps)   # step: 0-based index of the step just taken

and at the end exports ``method.embedder()`` (see ``lookalike.trainer.export``). Views must come
from a sampler with ``drop_last=True``: queue-based methods need the same batch size every step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

Crop = tuple[int, int, tuple[float, float]]
"""(crop size in pixels, number of crops per image, RandomResizedCrop scale range)."""


class SSLMethod(nn.Module, ABC):
    """A self-supervised method: its encoders, heads, queues and loss."""

    name: str
    crops: list[Crop]
    feature_dim: int
    default_mean: tuple[float, float, float]
    default_std: tuple[float, float, float]

    @abstractmethod
    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss (key ``"loss"``, a scalar with gradient) and detached logging scalars for one batch."""

    def on_after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step; ``step`` is 0-based, ``total_steps`` the planned total."""

    @abstractmethod
    def embedder(self) -> nn.Module:
        """The encoder used for serving: image batch ``[N, 3, S, S]`` -> features ``[N, feature_dim]``."""

    @property
    def num_views(self) -> int:
        return sum(n for _, n, _ in self.crops)

    def check_views(self, views: list[torch.Tensor]) -> None:
        """Raise ``ValueError`` unless ``views`` match :attr:`crops` (count, layout and equal batch sizes)."""
        if not isinstance(views, (list, tuple)) or len(views) != self.num_views:
            got = len(views) if isinstance(views, (list, tuple)) else type(views).__name__
            raise ValueError(
                f"{self.name} expects {self.num_views} views per batch (crops {self.crops}), got {got}; "
                "build the data pipeline from method.crops"
            )
        batch = views[0].shape[0]
        for v in views:
            if v.dim() != 4 or v.shape[1] != 3 or v.shape[0] != batch:
                raise ValueError(
                    f"{self.name}: every view must be [B, 3, S, S] with the same B, "
                    f"got {[tuple(x.shape) for x in views]}"
                )


def check_positive(**values: float) -> None:
    """Raise ``ValueError`` naming the first option that is not > 0."""
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"option {key} must be > 0, got {value}")


def check_momentum(m: float) -> None:
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1] (e.g. 0.999 for MoCo, 0.99 for MoBY), got {m}")


def crop_sizes(image_size: int) -> tuple[int, int]:
    """(global, local) crop sizes for a training ``image_size``: local = round(image_size * 96 / 224)."""
    if image_size <= 0:
        raise ValueError(f"image_size must be > 0, got {image_size}")
    return image_size, max(1, round(image_size * 96 / 224))
