"""Collectives behind one small interface, so the same code runs in one CPU process and under torchrun.

Every helper is a no-op (or the single-process equivalent) when ``torch.distributed`` is not
initialised, as in lightly's ``lightly/utils/dist.py``. Gathers are gradient-free: they are used
for keys, queues and assignments, which never need a gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is initialised (torchrun / ``init_process_group``)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group, 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group, 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, in rank order; no gradient flows back.

    Every process must pass a tensor of the same shape ([B, ...] -> [B * world, ...]).
    """
    if not is_distributed() or world_size() == 1:
        return x.detach()
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)  # [B * world, ...]


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if is_distributed() and world_size() > 1:
        dist.barrier()


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over processes, in place; returns ``x``."""
    if is_distributed() and world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``x`` over processes, in place; returns ``x``."""
    if is_distributed() and world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Average ``x`` over processes, in place; returns ``x``."""
    if is_distributed() and world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= world_size()
    return x


@torch.no_grad()
def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Copy ``x`` from rank ``src`` to every process, in place; returns ``x``."""
    if is_distributed() and world_size() > 1:
        dist.broadcast(x, src=src)
    return x


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle a batch across all processes (MoCo's shuffle-BN); return (local part, unshuffle index).

    Gathers [B, ...] from every process, applies one permutation chosen on rank 0 and keeps this
    process's B rows, so BatchNorm statistics of the key encoder are computed on a different
    subset of samples than the query encoder's. With one process it is a plain permutation.
    """
    batch_size = x.shape[0]
    x_all = concat_all_gather(x)  # [B * world, ...]
    idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)  # [B * world]
    broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)  # [B * world]
    idx_this = idx_shuffle.view(world_size(), batch_size)[rank()]  # [B]
    return x_all[idx_this], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo :func:`batch_shuffle` on its output (e.g. the keys): [B, ...] -> [B, ...] in input order."""
    batch_size = x.shape[0]
    x_all = concat_all_gather(x)  # [B * world, ...]
    idx_this = idx_unshuffle.view(world_size(), batch_size)[rank()]  # [B]
    return x_all[idx_this]
