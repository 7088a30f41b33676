"""Projection and prediction MLPs and SwAV prototypes: small blocks the methods compose.

- MoCo v2 (https://arxiv.org/abs/2003.04297): 2-layer MLP, hidden = backbone width, ReLU, no BN.
- MoBY (https://arxiv.org/abs/2105.04553): ``MoBYMLP``, Linear-BN-ReLU-Linear, 4096 hidden, 256 out.
- SwAV (https://arxiv.org/abs/2006.09882): Linear-BN-ReLU-Linear, 2048 hidden, 128 out, then
  L2-normalisation and a bias-free linear layer of prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``num_layers`` linear layers; the hidden ones are followed by [BatchNorm1d] and ReLU."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, hidden_bn: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an MLP needs num_layers >= 1, got {num_layers}")
        if min(in_dim, hidden_dim, out_dim) <= 0:
            raise ValueError(f"MLP sizes must be positive, got in={in_dim} hidden={hidden_dim} out={out_dim}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if hidden_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # [N, in_dim] -> [N, out_dim]


def moco_v2_projector(in_dim: int, dim: int = 128) -> MLP:
    """MoCo v2 head: ``Linear(in, in) -> ReLU -> Linear(in, dim)``."""
    return MLP(in_dim, in_dim, dim, num_layers=2, hidden_bn=False)


def moby_mlp(in_dim: int, inner_dim: int = 4096, out_dim: int = 256, num_layers: int = 2) -> MLP:
    """MoBY projector / predictor: ``Linear -> BN -> ReLU -> Linear``."""
    return MLP(in_dim, inner_dim, out_dim, num_layers=num_layers, hidden_bn=True)


def swav_projector(in_dim: int, hidden_mlp: int = 2048, feat_dim: int = 128) -> MLP:
    """SwAV projection head: ``Linear -> BN -> ReLU -> Linear``."""
    return MLP(in_dim, hidden_mlp, feat_dim, num_layers=2, hidden_bn=True)


class Prototypes(nn.Module):
    """SwAV prototypes ``C`` ([K, D], one unit vector per row): scores = z C^T for unit-norm z."""

    def __init__(self, dim: int, nmb_prototypes: int = 3000):
        super().__init__()
        if dim <= 0 or nmb_prototypes <= 0:
            raise ValueError(f"prototypes need dim > 0 and nmb_prototypes > 0, got {dim}, {nmb_prototypes}")
        self.weight = nn.Parameter(torch.empty(nmb_prototypes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # as nn.Linear
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere (SwAV does this before each step)."""
        self.weight.copy_(F.normalize(self.weight, dim=1, p=2))

    def forward(self, z: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Scores ``[N, K]`` for embeddings ``z`` ``[N, D]``.

        ``frozen``: the prototypes receive an all-zero gradient (SwAV freezes them for the first
        iterations). The weight stays in the autograd graph, so DistributedDataParallel without
        ``find_unused_parameters`` still sees a gradient for it; optimizers then move it at most by
        weight decay, i.e. along itself, which the next :meth:`normalize_` undoes.
        """
        weight = self.weight.detach() + 0.0 * self.weight if frozen else self.weight  # [K, D]
        return F.linear(z, weight)  # [N, K]
