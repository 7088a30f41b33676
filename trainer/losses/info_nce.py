"""InfoNCE with a queue of negatives, as in MoCo (He et al., https://arxiv.org/abs/1911.05722, Alg. 1).

Paper pseudocode::

    l_pos = bmm(q.view(N,1,C), k.view(N,C,1))    # positive logits: Nx1
    l_neg = mm(q.view(N,C), queue.view(C,K))     # negative logits: NxK
    logits = cat([l_pos, l_neg], dim=1)          # Nx(1+K)
    labels = zeros(N)                            # positives are the 0-th
    loss = CrossEntropyLoss(logits/t, labels)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, T: float) -> None:
    if q.dim() != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [N, C], got {tuple(q.shape)} and {tuple(k.shape)}")
    if queue.dim() != 2 or queue.shape[0] != q.shape[1]:
        raise ValueError(f"queue must be [C, K] with C={q.shape[1]} (the key dimension), got {tuple(queue.shape)}")
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")


def info_nce_logits(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, T: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits ``[N, 1 + K]`` (positive first) for L2-normalised queries ``q``, keys ``k`` and ``queue``.

    ``mask`` ``[N, K]`` (True: drop) removes queue entries from a query's negatives, e.g. keys of
    its own image left in the queue by an earlier step.
    """
    _check(q, k, queue, T)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # [N, 1]
    l_neg = torch.einsum("nc,ck->nk", q, queue.detach())  # [N, K]
    if mask is not None:
        if mask.shape != l_neg.shape:
            raise ValueError(f"mask must be [N, K]={tuple(l_neg.shape)}, got {tuple(mask.shape)}")
        l_neg = l_neg.masked_fill(mask, float("-inf"))
    return torch.cat([l_pos, l_neg], dim=1) / T  # [N, 1 + K]


def info_nce_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, T: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's contrastive loss; returns ``(loss, logits)``.

    Args:
        q: queries ``[N, C]``, L2-normalised, with gradient.
        k: positive keys ``[N, C]``, L2-normalised; treated as constants (no gradient).
        queue: negative keys ``[C, K]``, L2-normalised; pass a copy if it is updated in place later.
        T: softmax temperature.
        mask: ``[N, K]`` bool, True where a queue entry must not count as a negative of that query.
    """
    logits = info_nce_logits(q, k.detach(), queue, T, mask)  # [N, 1 + K]
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # [N]
    return F.cross_entropy(logits.float(), labels), logits
