"""MoBY: MoCo v2 + BYOL for (vision) transformers, with a symmetric loss and two queues.

Xie et al., "Self-Supervised Learning with Swin Transformers", https://arxiv.org/abs/2105.04553
(reference code: SwinTransformer/Transformer-SSL, ``models/moby.py``).

Online branch: ``encoder`` -> ``projector`` -> ``predictor``; target branch: ``encoder_k`` ->
``projector_k``, an EMA of the online one whose momentum rises from ``m`` = 0.99 to 1 on a cosine
schedule. Defaults are the paper's DeiT-S/16 setting: 256-d projections through 4096-d
2-layer MLPs, queues of K = 4096 per view, T = 0.2, drop path 0.2 online / 0 target.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lookalike.trainer import dist
from lookalike.trainer.losses.moby import moby_loss
from lookalike.trainer.methods.base import SSLMethod, check_momentum, check_positive
from lookalike.trainer.methods.momentum import cosine_momentum, init_momentum_encoder, momentum_update
from lookalike.trainer.models.backbones import backbone_mean_std, create_backbone
from lookalike.trainer.models.heads import moby_mlp
from torch import nn


class MoBY(SSLMethod):
    """MoBY on a timm backbone (DeiT-S/16 by default, 384-d features)."""

    def __init__(
        self,
        backbone: str = "deit_small_patch16_224",
        pretrained: str | None = None,
        *,
        name: str = "moby",
        proj_dim: int = 256,
        inner_dim: int = 4096,
        proj_num_layers: int = 2,
        pred_num_layers: int = 2,
        K: int = 4096,
        m: float = 0.99,
        T: float = 0.2,
        online_drop_path_rate: float = 0.2,
        target_drop_path_rate: float = 0.0,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_positive(proj_dim=proj_dim, inner_dim=inner_dim, K=K, T=T, image_size=image_size)
        check_momentum(m)
        self.name = name
        self.K, self.m, self.T = int(K), float(m), float(T)
        self.crops = [(image_size, 2, (float(crop_scale[0]), float(crop_scale[1])))]
        self.current_m = self.m

        kwargs = dict(backbone_kwargs or {})
        self.encoder, num_features = create_backbone(
            backbone, pretrained, image_size=image_size, drop_path_rate=online_drop_path_rate, **kwargs
        )
        self.encoder_k, _ = create_backbone(
            backbone, None, image_size=image_size, drop_path_rate=target_drop_path_rate, **kwargs
        )
        self.feature_dim = num_features
        self.default_mean, self.default_std = backbone_mean_std(self.encoder)

        self.projector = moby_mlp(num_features, inner_dim, proj_dim, proj_num_layers)
        self.projector_k = moby_mlp(num_features, inner_dim, proj_dim, proj_num_layers)
        self.predictor = moby_mlp(proj_dim, inner_dim, proj_dim, pred_num_layers)
        init_momentum_encoder(self.encoder, self.encoder_k)
        init_momentum_encoder(self.projector, self.projector_k)

        self.register_buffer("queue1", F.normalize(torch.randn(proj_dim, self.K), dim=0))  # [C, K]
        self.register_buffer("queue2", F.normalize(torch.randn(proj_dim, self.K), dim=0))  # [C, K]
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.queue1: torch.Tensor
        self.queue2: torch.Tensor
        self.queue_ptr: torch.Tensor

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys1: torch.Tensor, keys2: torch.Tensor) -> None:
        keys1 = dist.concat_all_gather(keys1)  # [B * world, C]
        keys2 = dist.concat_all_gather(keys2)  # [B * world, C]
        batch_size = keys1.shape[0]
        if self.K % batch_size != 0:
            raise ValueError(
                f"{self.name}: queue size K={self.K} is not a multiple of the global batch "
                f"{batch_size} (batch per process x {dist.world_size()} processes); set K to a multiple "
                f"of it, e.g. K={max(1, self.K // batch_size) * batch_size}, or change the batch size"
            )
        ptr = int(self.queue_ptr)
        self.queue1[:, ptr : ptr + batch_size] = keys1.T.to(self.queue1.dtype)  # [C, B * world]
        self.queue2[:, ptr : ptr + batch_size] = keys2.T.to(self.queue2.dtype)  # [C, B * world]
        self.queue_ptr[0] = (ptr + batch_size) % self.K

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_views(views)
        im_1, im_2 = views
        pred_1 = F.normalize(self.predictor(self.projector(self.encoder(im_1))), dim=1)  # [N, C]
        pred_2 = F.normalize(self.predictor(self.projector(self.encoder(im_2))), dim=1)  # [N, C]

        with torch.no_grad():  # no gradient to keys
            proj_1_ng = F.normalize(self.projector_k(self.encoder_k(im_1)), dim=1)  # [N, C]
            proj_2_ng = F.normalize(self.projector_k(self.encoder_k(im_2)), dim=1)  # [N, C]

        loss = moby_loss(pred_1, pred_2, proj_1_ng, proj_2_ng, self.queue1.clone(), self.queue2.clone(), self.T)
        self._dequeue_and_enqueue(proj_1_ng, proj_2_ng)
        return {"loss": loss, "momentum": torch.tensor(self.current_m, device=loss.device)}

    def on_after_step(self, step: int, total_steps: int) -> None:
        """EMA update with the momentum of the next step (the reference updates before each forward)."""
        self.current_m = cosine_momentum(self.m, step + 1, total_steps)
        momentum_update(self.encoder, self.encoder_k, self.current_m)
        momentum_update(self.projector, self.projector_k, self.current_m)

    def embedder(self) -> nn.Module:
        return self.encoder
