"""Two tiny real TorchScript embedders (a pooled projection) and synthetic pictures, for multi-model tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lookalike.modelfile import EmbedderMeta, save_embedder


class Pooled(torch.nn.Module):
    """A tiny real embedder: 4x4 average pool of the image, then a projection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def write_models(folder: Path) -> dict[str, Path]:
    """``old`` (24-d, 32 px) and ``new`` (16-d, 48 px), different weights: a reindex changes every vector."""
    torch.manual_seed(1)
    old = save_embedder(Pooled(24).eval(), folder / "old.pt", EmbedderMeta("old-net", 24, input_size=32,
                                                                           resize_size=32))  # fmt: skip
    new = save_embedder(Pooled(16).eval(), folder / "new.pt", EmbedderMeta("new-net", 16, input_size=48,
                                                                           resize_size=48))  # fmt: skip
    return {"old": old, "new": new}


def picture(seed: int, size: int = 96) -> bytes:
    """A PNG of smooth colour blobs plus noise: distinct for each seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
    noise = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
