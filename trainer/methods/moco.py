"""MoCo v2: momentum contrast with a queue of negatives, on any timm backbone.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", https://arxiv.org/abs/1911.05722
Chen et al., "Improved Baselines with Momentum Contrastive Learning" (v2), https://arxiv.org/abs/2003.04297

Names follow the paper: ``encoder_q`` / ``encoder_k`` (backbone + MLP head), queue size ``K``,
momentum ``m``, temperature ``T``. Defaults are MoCo v2's (dim 128, K 65536, m 0.999, T 0.2,
MLP head, crops of scale 0.2-1). Under torchrun the queue receives the keys of every process,
so it is identical on all ranks, and shuffle-BN shuffles the key batch across processes.

Small datasets (issue 13): a queue longer than ``dataset - batch`` holds keys of the very images in
the batch, which then act as their own negatives. The queue remembers which image each key came
from (``queue_index``) and, given the batch's image indices, masks those entries out of the loss.
``K=0`` drops the queue: MoCo v3's in-batch negatives (Chen et al., https://arxiv.org/abs/2104.02057),
symmetrised, which needs no pool of negatives larger than the batch.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from lookalike.trainer import dist
from lookalike.trainer.losses.info_nce import info_nce_loss
from lookalike.trainer.methods.base import SSLMethod, check_momentum, check_positive
from lookalike.trainer.methods.momentum import init_momentum_encoder, momentum_update
from lookalike.trainer.models.backbones import backbone_mean_std, create_backbone
from lookalike.trainer.models.heads import moco_v2_projector
from torch import nn


class MoCo(SSLMethod):
    """MoCo v2 (``name="mocov2"``) or MoCo on another timm backbone (``name="moco_timm"``)."""

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: str | None = None,
        *,
        name: str = "mocov2",
        dim: int = 128,
        K: int = 65536,
        m: float = 0.999,
        T: float = 0.2,
        mlp: bool = True,
        shuffle_bn: bool = True,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_positive(dim=dim, T=T, image_size=image_size)
        if K < 0:
            raise ValueError(f"option K must be >= 0 (0: in-batch negatives, no queue), got {K}")
        check_momentum(m)
        self.name = name
        self.K, self.m, self.T = int(K), float(m), float(T)
        self.shuffle_bn = shuffle_bn
        self.crops = [(image_size, 2, (float(crop_scale[0]), float(crop_scale[1])))]

        kwargs = dict(backbone_kwargs or {})
        net_q, num_features = create_backbone(backbone, pretrained, image_size=image_size, **kwargs)
        net_k, _ = create_backbone(backbone, None, image_size=image_size, **kwargs)
        self.feature_dim = num_features
        self.default_mean, self.default_std = backbone_mean_std(net_q)

        def head() -> nn.Module:
            return moco_v2_projector(num_features, dim) if mlp else nn.Linear(num_features, dim)

        self.encoder_q = nn.Sequential(OrderedDict(backbone=net_q, head=head()))
        self.encoder_k = nn.Sequential(OrderedDict(backbone=net_k, head=head()))
        init_momentum_encoder(self.encoder_q, self.encoder_k)

        self.register_buffer("queue", F.normalize(torch.randn(dim, self.K), dim=0))  # [C, K]
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        # Image index of each queued key (-1: random initial key or unknown); saved, so a resumed run masks alike.
        self.register_buffer("queue_index", torch.full((self.K,), -1, dtype=torch.long))
        self.queue: torch.Tensor
        self.queue_ptr: torch.Tensor
        self.queue_index: torch.Tensor
        self.accepts_index = True

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Checkpoints from before ``queue_index`` existed load with every queued key's image unknown (-1)."""
        key = prefix + "queue_index"
        if key not in state_dict and prefix + "queue" in state_dict:
            state_dict[key] = torch.full((self.K,), -1, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor, index: torch.Tensor | None = None) -> None:
        keys = dist.concat_all_gather(keys)  # [B * world, C]
        if index is None:
            index = torch.full((keys.shape[0],), -1, dtype=torch.long, device=keys.device)
        else:
            index = dist.concat_all_gather(index.to(keys.device))  # [B * world]
        batch_size = keys.shape[0]
        if self.K % batch_size != 0:
            raise ValueError(
                f"{self.name}: queue size K={self.K} is not a multiple of the global batch "
                f"{batch_size} (batch per process x {dist.world_size()} processes); set K to a multiple "
                f"of it, e.g. K={max(1, self.K // batch_size) * batch_size}, or change the batch size"
            )
        ptr = int(self.queue_ptr)
        self.queue[:, ptr : ptr + batch_size] = keys.T.to(self.queue.dtype)  # [C, B * world]
        self.queue_index[ptr : ptr + batch_size] = index
        self.queue_ptr[0] = (ptr + batch_size) % self.K

    def _keys(self, im_k: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.shuffle_bn:
                im_k, idx_unshuffle = dist.batch_shuffle(im_k)  # [N, 3, S, S], another subset per process
            k = F.normalize(self.encoder_k(im_k), dim=1)  # [N, C]
            if self.shuffle_bn:
                k = dist.batch_unshuffle(k, idx_unshuffle)  # [N, C], back in im_q's order
        return k

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``index``: the dataset index of each image in the batch ``[N]``; its queued keys are masked."""
        self.check_views(views)
        im_q, im_k = views
        if self.K == 0:
            return self._in_batch(im_q, im_k)
        q = F.normalize(self.encoder_q(im_q), dim=1)  # [N, C]
        k = self._keys(im_k)
        mask = None
        if index is not None:
            index = index.to(q.device)
            mask = self.queue_index[None, :] == index[:, None]  # [N, K]: keys of the batch's own images
        loss, logits = info_nce_loss(q, k, self.queue.clone(), self.T, mask=mask)  # logits: [N, 1 + K]
        self._dequeue_and_enqueue(k, index)
        acc1 = (logits.detach().argmax(dim=1) == 0).float().mean()
        out = {"loss": loss, "acc1": acc1}
        if mask is not None:
            out["own_in_queue"] = mask.any(dim=1).float().mean()  # fraction of images whose key was masked
        return out

    def _in_batch(self, im_q: torch.Tensor, im_k: torch.Tensor) -> dict[str, torch.Tensor]:
        """MoCo v3: each query's positive is its own key; the other keys of the (global) batch are negatives."""
        q1 = F.normalize(self.encoder_q(im_q), dim=1)  # [N, C]
        q2 = F.normalize(self.encoder_q(im_k), dim=1)  # [N, C]
        k1, k2 = self._keys(im_q), self._keys(im_k)
        loss1, acc1 = self._batch_loss(q1, k2)
        loss2, acc2 = self._batch_loss(q2, k1)
        return {"loss": (loss1 + loss2) / 2, "acc1": (acc1 + acc2) / 2}

    def _batch_loss(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_all = dist.concat_all_gather(k.contiguous())  # [N * world, C], no gradient
        logits = q @ k_all.T / self.T  # [N, N * world]
        labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * dist.rank()  # [N]
        loss = F.cross_entropy(logits.float(), labels) * 2 * self.T  # MoCo v3 scales by 2T
        acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, acc

    def on_after_step(self, step: int, total_steps: int) -> None:
        momentum_update(self.encoder_q, self.encoder_k, self.m)

    def embedder(self) -> nn.Module:
        return self.encoder_q.backbone
