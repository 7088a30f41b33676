"""Map-style dataset of augmented views, deterministic per (seed, epoch, index).

Each sample's augmentation draws from its own generator seeded by ``(seed, epoch, index)``,
so the views do not depend on the number of DataLoader workers, on the number of processes,
or on whether the run was resumed: that is what makes "resume gives the same state as an
uninterrupted run" hold. An unreadable image is replaced by the next readable one (keeping
batches full, which MoCo's queue and DDP's all-gathers need) and reported in the batch.
"""

from __future__ import annotations

import torch
from lookalike.trainer.data.augment import MultiCropAugment
from lookalike.trainer.data.images import UnreadableImage
from lookalike.trainer.data.sources import ImageSource
from torch.utils.data import Dataset

MAX_TRIES = 64
Sample = tuple[list[torch.Tensor], list[tuple[str, str]]]
Batch = tuple[list[torch.Tensor], list[tuple[str, str]]]
IndexedSample = tuple[list[torch.Tensor], list[tuple[str, str]], int]
IndexedBatch = tuple[list[torch.Tensor], list[tuple[str, str]], torch.Tensor]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (((seed * 1_000_003) ^ epoch) * 1_000_003 ^ index) % (2**63 - 1)


class ViewsDataset(Dataset[Sample]):
    """``index -> (views, skipped)``; ``skipped`` lists ``(ref, reason)`` of images passed over."""

    def __init__(self, source: ImageSource, augment: MultiCropAugment, seed: int = 0, with_index: bool = False) -> None:
        if len(source) == 0:
            raise ValueError("the image source is empty")
        self.source = source
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.with_index = with_index  # samples end with the index of the image actually loaded

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (a sampler may pass ``(epoch, index)`` instead)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int | tuple[int, int]) -> Sample | IndexedSample:
        """``index``, or ``(epoch, index)`` from a sampler that carries the epoch to persistent workers."""
        epoch = self.epoch
        if isinstance(index, tuple):
            epoch, index = index
        skipped: list[tuple[str, str]] = []
        n = len(self.source)
        for attempt in range(min(n, MAX_TRIES)):
            j = (index + attempt) % n
            try:
                image = self.source.load(j)
            except UnreadableImage as exc:
                skipped.append((exc.ref, exc.reason))
                continue
            # fork_rng keeps the caller's global RNG untouched when num_workers == 0.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                views = self.augment(image)
            if self.with_index:
                return views, skipped, j
            return views, skipped
        raise RuntimeError(
            f"{len(skipped)} images in a row from {self.source.ref(index)} are unreadable, "
            f"e.g. {skipped[0][0]}: {skipped[0][1]}; check the list's root and the files"
        )


def collate_views(samples: list[Sample] | list[IndexedSample]) -> Batch | IndexedBatch:
    """``[(views, skipped[, index]), ...] -> ([view_0 batch [B,3,S,S], ...], all skipped[, indices [B]])``."""
    n_views = len(samples[0][0])
    views = [torch.stack([s[0][v] for s in samples]) for v in range(n_views)]
    skipped = [item for s in samples for item in s[1]]
    if len(samples[0]) == 3:
        return views, skipped, torch.tensor([s[2] for s in samples], dtype=torch.long)  # type: ignore[misc]
    return views, skipped
