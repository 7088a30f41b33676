"""MoBY's symmetric contrastive loss (Xie et al., https://arxiv.org/abs/2105.04553, Sec. 3).

Each view's prediction (online encoder -> projector -> predictor) is contrasted with the
other view's target projection (momentum encoder -> momentum projector), against the queue
that holds earlier target projections of that other view; the two terms are summed::

    loss = contrastive_loss(pred_1, proj_2_ng, queue2) + contrastive_loss(pred_2, proj_1_ng, queue1)
"""

from __future__ import annotations

import torch
from lookalike.trainer.losses.info_nce import info_nce_loss


def moby_loss(
    pred_1: torch.Tensor,
    pred_2: torch.Tensor,
    proj_1_ng: torch.Tensor,
    proj_2_ng: torch.Tensor,
    queue1: torch.Tensor,
    queue2: torch.Tensor,
    T: float,
) -> torch.Tensor:
    """Sum of the two InfoNCE terms; all inputs L2-normalised, ``pred_*``/``proj_*`` [N, C], queues [C, K]."""
    loss_12, _ = info_nce_loss(pred_1, proj_2_ng, queue2, T)
    loss_21, _ = info_nce_loss(pred_2, proj_1_ng, queue1, T)
    return loss_12 + loss_21
