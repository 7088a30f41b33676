"""SwAV: swapping assignments between multi-crop views, with online Sinkhorn-Knopp codes.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
https://arxiv.org/abs/2006.09882 (reference code: facebookresearch/swav, ``main_swav.py``).

``backbone`` -> ``projection_head`` -> L2-normalise -> ``prototypes`` (scores against K unit
prototypes). The codes of the two global crops (``crops_for_assign``) are computed by Sinkhorn
(``epsilon`` 0.05, 3 iterations) over the whole global batch; every other view predicts them
(temperature ``T`` 0.1). Prototypes are renormalised after every step and receive no update
for the first ``freeze_prototypes_iters`` steps. Defaults: ResNet-50, 2048-d hidden MLP,
128-d embeddings, 3000 prototypes, 2x224 + 6x96 crops, no queue (``queue_length`` > 0 turns
on the feature queue for small batches, from step ``queue_start_iters``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lookalike.trainer import dist
from lookalike.trainer.losses.swav import sinkhorn, swav_loss
from lookalike.trainer.methods.base import SSLMethod, check_positive, crop_sizes
from lookalike.trainer.models.backbones import backbone_mean_std, create_backbone
from lookalike.trainer.models.heads import Prototypes, swav_projector
from torch import nn


class SwAV(SSLMethod):
    """SwAV with multi-crop on a timm backbone (ResNet-50 by default, 2048-d features)."""

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: str | None = None,
        *,
        name: str = "swav",
        hidden_mlp: int = 2048,
        feat_dim: int = 128,
        nmb_prototypes: int = 3000,
        T: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        nmb_crops: tuple[int, int] = (2, 6),
        min_scale_crops: tuple[float, float] = (0.14, 0.05),
        max_scale_crops: tuple[float, float] = (1.0, 0.14),
        crops_for_assign: tuple[int, ...] = (0, 1),
        freeze_prototypes_iters: int = 313,
        queue_length: int = 0,
        queue_start_iters: int = 0,
        image_size: int = 224,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_positive(hidden_mlp=hidden_mlp, feat_dim=feat_dim, nmb_prototypes=nmb_prototypes, T=T, epsilon=epsilon)
        check_positive(sinkhorn_iterations=sinkhorn_iterations)
        if len(nmb_crops) != 2 or nmb_crops[0] < 1 or nmb_crops[1] < 0 or sum(nmb_crops) < 2:
            raise ValueError(f"nmb_crops must be (global >= 1, local >= 0) with >= 2 views in all, got {nmb_crops}")
        if len(min_scale_crops) != 2 or len(max_scale_crops) != 2:
            raise ValueError(
                "min_scale_crops and max_scale_crops take two numbers each (global crops, local crops), "
                f"got {min_scale_crops} and {max_scale_crops}"
            )
        if not crops_for_assign or any(not 0 <= c < nmb_crops[0] for c in crops_for_assign):
            raise ValueError(f"crops_for_assign must index global crops 0..{nmb_crops[0] - 1}, got {crops_for_assign}")
        if queue_length < 0 or freeze_prototypes_iters < 0 or queue_start_iters < 0:
            raise ValueError("queue_length, queue_start_iters and freeze_prototypes_iters must be >= 0")
        self.name = name
        self.T, self.epsilon, self.sinkhorn_iterations = float(T), float(epsilon), int(sinkhorn_iterations)
        self.crops_for_assign = tuple(int(c) for c in crops_for_assign)
        self.freeze_prototypes_iters = int(freeze_prototypes_iters)
        self.queue_length, self.queue_start_iters = int(queue_length), int(queue_start_iters)
        sizes = crop_sizes(image_size)
        self.crops = [
            (size, int(n), (float(lo), float(hi)))
            for size, n, lo, hi in zip(sizes, nmb_crops, min_scale_crops, max_scale_crops, strict=True)
            if n > 0
        ]

        self.backbone, num_features = create_backbone(
            backbone, pretrained, image_size=image_size, **dict(backbone_kwargs or {})
        )
        self.feature_dim = num_features
        self.default_mean, self.default_std = backbone_mean_std(self.backbone)
        self.projection_head = swav_projector(num_features, hidden_mlp, feat_dim)
        self.prototypes = Prototypes(feat_dim, nmb_prototypes)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.iteration: torch.Tensor
        # The queue holds this process's own past embeddings, so it is a plain attribute and not a
        # buffer: DistributedDataParallel would overwrite buffers with rank 0's copy every step.
        self.queue: torch.Tensor | None = None
        self._use_the_queue = False

    def _embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Backbone over runs of same-size views (one pass per resolution), then head: [V * B, D]."""
        feats: list[torch.Tensor] = []
        start = 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))  # [(end - start) * B, F]
            start = end
        return F.normalize(self.projection_head(torch.cat(feats)), dim=1)  # [V * B, D]

    def _queue_scores(self, i: int, out: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Prepend the scores of queued embeddings of assigned crop ``i`` to ``out``; push ``embedding``."""
        bs = embedding.shape[0]
        local = self.queue_length // dist.world_size()
        if self.queue_length % (bs * dist.world_size()) != 0:
            raise ValueError(
                f"swav: queue_length={self.queue_length} must be a multiple of the global batch "
                f"{bs * dist.world_size()} (batch per process x processes); e.g. queue_length="
                f"{max(1, self.queue_length // (bs * dist.world_size())) * bs * dist.world_size()}"
            )
        if self.queue is None or self.queue.device != embedding.device:
            self.queue = embedding.new_zeros(len(self.crops_for_assign), local, embedding.shape[1], dtype=torch.float32)
        if self._use_the_queue or not torch.all(self.queue[i, -1, :] == 0):
            self._use_the_queue = True
            queued = self.prototypes(self.queue[i]).detach().to(out.dtype)  # [L, K]
            out = torch.cat((queued, out))  # [L + B, K]
        self.queue[i, bs:] = self.queue[i, :-bs].clone()  # [L - B, D] shift
        self.queue[i, :bs] = embedding.detach().float()  # [B, D] newest first
        return out

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_views(views)
        bs = views[0].shape[0]
        embedding = self._embed(views)  # [V * B, D]
        frozen = int(self.iteration) < self.freeze_prototypes_iters
        output = self.prototypes(embedding, frozen=frozen)  # [V * B, K]
        scores = list(output.split(bs))  # V x [B, K]

        use_queue = self.queue_length > 0 and int(self.iteration) >= self.queue_start_iters
        codes: list[torch.Tensor] = []
        with torch.no_grad():
            for i, crop_id in enumerate(self.crops_for_assign):
                out = scores[crop_id].detach()  # [B, K]
                if use_queue:
                    out = self._queue_scores(i, out, embedding[crop_id * bs : (crop_id + 1) * bs])
                codes.append(sinkhorn(out, self.epsilon, self.sinkhorn_iterations)[-bs:])  # [B, K]
        loss = swav_loss(scores, codes, self.crops_for_assign, self.T)
        return {"loss": loss, "queue_in_use": torch.tensor(float(self._use_the_queue), device=loss.device)}

    @torch.no_grad()
    def on_after_step(self, step: int, total_steps: int) -> None:
        """Renormalise the prototypes; count steps for freezing and the queue."""
        self.prototypes.normalize_()
        self.iteration.fill_(step + 1)

    def embedder(self) -> nn.Module:
        return self.backbone
