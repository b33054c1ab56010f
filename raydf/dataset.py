"""A torch Dataset over the decoded image array (shared, read-only) and a fold's row indices."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from raydf.transforms import seed_transform


class ImageArrayDataset(Dataset):
    """Rows `indices` of `images` (N, H, W, 3) uint8; yields (uint8 crop HWC tensor, label)."""

    def __init__(self, images: np.ndarray, indices: np.ndarray, labels: Optional[np.ndarray],
                 transform: Callable[..., dict]):
        self.images, self.indices, self.labels, self.transform = images, np.asarray(indices), labels, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.indices[i]
        img = self.transform(image=self.images[row])["image"]
        # The shared array is read-only (Ray object store); a crop of it may be a read-only view.
        img = torch.from_numpy(np.array(img, copy=True) if not img.flags.writeable else np.ascontiguousarray(img))
        label = int(self.labels[row]) if self.labels is not None else -1
        return img, label


def _reseed_worker(worker_id: int) -> None:
    # Each worker holds a copy of the transform with the same random state; torch gives every worker of every
    # epoch a different initial seed, so reseeding from it makes augmentations differ across workers and epochs.
    info = torch.utils.data.get_worker_info()
    seed_transform(info.dataset.transform, torch.initial_seed() % 2**32)


def make_loader(dataset: ImageArrayDataset, batch_size: int, *, train: bool, workers: int = 0,
                seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """Training loaders shuffle and drop the last partial batch (BatchNorm1d cannot train on one image)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=workers,
        generator=generator, worker_init_fn=_reseed_worker if workers else None,
        persistent_workers=workers > 0, pin_memory=pin_memory,
    )
