"""Momentum (EMA) encoders: θ_k <- m θ_k + (1 - m) θ_q, with MoCo's constant m or MoBY's cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def init_momentum_encoder(online: nn.Module, target: nn.Module) -> None:
    """Copy ``online``'s parameters and buffers into ``target`` and stop gradients into ``target``."""
    target.load_state_dict(online.state_dict())
    for p in target.parameters():
        p.requires_grad_(False)


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """θ_k <- m θ_k + (1 - m) θ_q for every parameter (buffers such as BN statistics are left alone)."""
    params_q = list(online.parameters())
    params_k = list(target.parameters())
    if len(params_q) != len(params_k):
        raise ValueError("online and momentum encoders must have the same architecture")
    for p_q, p_k in zip(params_q, params_k, strict=True):
        p_k.mul_(m).add_(p_q.detach().to(p_k.dtype), alpha=1.0 - m)


def cosine_momentum(base_m: float, step: int, total_steps: int) -> float:
    """MoBY / BYOL schedule: 1 - (1 - m) (cos(pi k / K) + 1) / 2, from ``base_m`` at k=0 to 1 at k=K."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    k = min(max(step, 0), total_steps)
    return 1.0 - (1.0 - base_m) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0
