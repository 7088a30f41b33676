"""SwAV: Sinkhorn-Knopp codes and the swapped prediction loss (Caron et al., https://arxiv.org/abs/2006.09882).

Paper pseudocode (Alg. 1)::

    scores = mm(z, C)                             # prototype scores: BxK
    with torch.no_grad():
        q_t = sinkhorn(scores_t); q_s = sinkhorn(scores_s)
    p_t = Softmax(scores_t / temp); p_s = Softmax(scores_s / temp)
    loss = - 0.5 * mean(q_t * log(p_s) + q_s * log(p_t))

    def sinkhorn(scores, eps=0.05, niters=3):
        Q = exp(scores / eps).T
        Q /= sum(Q)
        K, B = Q.shape
        u, r, c = zeros(K), ones(K) / K, ones(B) / B
        for _ in range(niters):
            u = sum(Q, dim=1)
            Q *= (r / u).unsqueeze(1)
            Q *= (c / sum(Q, dim=0)).unsqueeze(0)
        return (Q / sum(Q, dim=0, keepdim=True)).T

The sums run over the samples of every process (``distributed_sinkhorn`` in the authors' code).
With multi-crop, every view predicts the code of each assigned view but itself, averaged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lookalike.trainer import dist


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes ``[B, K]`` (rows sum to 1) for scores ``[B, K]``, equipartitioned over all processes.

    The pseudocode above, carried out on ``log Q`` in float32 (each normalisation is a
    subtraction of a log-sum-exp), so neither a small ``epsilon`` nor large scores overflow or
    underflow into NaN; the result is the same as the plain version wherever that one is finite.
    """
    if epsilon <= 0:
        raise ValueError(f"sinkhorn epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"sinkhorn iterations must be >= 1, got {iterations}")
    log_q = scores.detach().float().t() / epsilon  # [K, B]: log of exp(scores / eps).T
    K = log_q.shape[0]  # number of prototypes
    B = log_q.shape[1] * dist.world_size()  # number of samples to assign, all processes
    log_q -= _global_logsumexp(log_q.reshape(1, -1))  # [K, B]: Q /= sum(Q)
    for _ in range(iterations):
        log_q -= _global_logsumexp(log_q) + math.log(K)  # [K, 1]: each row sums to 1/K
        log_q -= torch.logsumexp(log_q, dim=0, keepdim=True) + math.log(B)  # [1, B]: each column to 1/B
    return torch.exp(log_q + math.log(B)).t()  # [B, K]: columns sum to 1, one distribution per sample


def _global_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(x), dim=1)) over the columns of every process: [R, C_local] -> [R, 1]."""
    local = torch.logsumexp(x, dim=1, keepdim=True)  # [R, 1]
    if dist.world_size() == 1:
        return local
    top = dist.all_reduce_max(local.clone())  # [R, 1]
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = dist.all_reduce_sum(torch.exp(local - top))  # [R, 1]
    return top + torch.log(total)


def swav_loss(
    scores: Sequence[torch.Tensor],
    codes: Sequence[torch.Tensor],
    crops_for_assign: Sequence[int],
    T: float,
) -> torch.Tensor:
    """Swapped prediction loss over multi-crop views.

    Args:
        scores: one ``[B, K]`` prototype score tensor per view (cosine scores, with gradient).
        codes: one ``[B, K]`` code (from :func:`sinkhorn`) per entry of ``crops_for_assign``.
        crops_for_assign: indices of the views whose codes are predicted (SwAV: the two global crops).
        T: softmax temperature.
    """
    if len(codes) != len(crops_for_assign):
        raise ValueError(f"need one code per assigned crop, got {len(codes)} codes for {list(crops_for_assign)}")
    if len(scores) < 2:
        raise ValueError(f"SwAV needs at least 2 views, got {len(scores)}")
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    loss = scores[0].new_zeros((), dtype=torch.float32)
    for q, crop_id in zip(codes, crops_for_assign, strict=True):
        if not 0 <= crop_id < len(scores):
            raise ValueError(f"crops_for_assign entry {crop_id} is not a view index (0..{len(scores) - 1})")
        subloss = scores[0].new_zeros((), dtype=torch.float32)
        for v, s in enumerate(scores):
            if v == crop_id:
                continue
            log_p = F.log_softmax(s.float() / T, dim=1)  # [B, K]
            subloss = subloss - torch.mean(torch.sum(q * log_p, dim=1))
        loss = loss + subloss / (len(scores) - 1)
    return loss / len(crops_for_assign)
