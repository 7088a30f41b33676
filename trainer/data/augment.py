"""Multi-crop augmentation that produces exactly the views a method asks for (``method.crops``).

The pipeline per view is MoCo v2's (https://arxiv.org/abs/2003.04297, ``main_moco.py --aug-plus``):
random resized crop, colour jitter (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5),
horizontal flip. SwAV's small crops and MoBY's two views are the same pipeline with other
sizes and scale ranges, which is what ``method.crops`` carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T

Crop = tuple[int, int, tuple[float, float]]  # (crop_size, n_crops, (scale_min, scale_max))


@dataclass(frozen=True)
class AugmentOptions:
    """Strength of the photometric part; the defaults are MoCo v2's."""

    jitter: float = 0.4  # brightness, contrast, saturation; hue is a quarter of it
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        for name in ("jitter_p", "grayscale_p", "blur_p", "flip_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {value}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"augment.jitter must be in [0, 1], got {self.jitter}")


def check_crops(crops: Sequence[Crop]) -> list[Crop]:
    """Validate ``method.crops`` once, so a bad method fails at start-up, not in a worker."""
    checked = []
    for item in crops:
        try:
            size, count, (lo, hi) = item
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"method.crops entries must be (size, n_crops, (scale_min, scale_max)), got {item!r}"
            ) from exc
        if int(size) <= 0 or int(count) <= 0 or not 0.0 < float(lo) <= float(hi) <= 1.0:
            raise ValueError(f"bad crop spec {item!r}: need size > 0, n_crops > 0, 0 < scale_min <= scale_max <= 1")
        checked.append((int(size), int(count), (float(lo), float(hi))))
    if not checked:
        raise ValueError("method.crops is empty; a method must ask for at least one view")
    return checked


def _view_pipeline(
    size: int, scale: tuple[float, float], mean: Sequence[float], std: Sequence[float], opts: AugmentOptions
) -> T.Compose:
    j = opts.jitter
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # odd, ~10% of the crop as in SimCLR / MoCo v2
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomApply([T.ColorJitter(j, j, j, j / 4)], p=opts.jitter_p),
            T.RandomGrayscale(p=opts.grayscale_p),
            T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=opts.blur_p),
            T.RandomHorizontalFlip(p=opts.flip_p),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


class MultiCropAugment:
    """``image -> [view_0, view_1, ...]``, one tensor ``[3, S_i, S_i]`` per view, in crop order."""

    def __init__(
        self,
        crops: Sequence[Crop],
        mean: Sequence[float],
        std: Sequence[float],
        options: AugmentOptions | None = None,
    ) -> None:
        opts = options or AugmentOptions()
        self.crops = check_crops(crops)
        self.pipelines = [
            _view_pipeline(size, scale, mean, std, opts) for size, count, scale in self.crops for _ in range(count)
        ]

    @property
    def n_views(self) -> int:
        return len(self.pipelines)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [pipeline(image) for pipeline in self.pipelines]
