"""A torch Dataset over the decoded image array (shared, read-only) and a fold's row indices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from raydf.data.self_blend import BlendSettings, self_blend
from raydf.data.transforms import seed_transform


def sample_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integers such as (fold seed, epoch, row)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


@dataclass(frozen=True)
class SyntheticFakes:
    """How a dataset turns real rows into self-blended fakes (`data.synthetic_fakes`), drawn from (seed, epoch, row).

    `share`: each real row among the dataset's own becomes a fake with this probability in each epoch (`only`).
    `extra_rows`: real rows appended to the dataset as fakes, one item each (`add`, and `only`'s validation).
    `landmarks`: (N, 5, 2) float32 per row of the image array, in its pixels (eyes, nose, mouth corners): the masks
    follow them; a row with NaN, or None for all, gets the ellipse (`synth.mask`, `raydf.data.self_blend`).
    `other`: the share of fakes whose altered copy is another real face, drawn from the rows `donors` (`synth.other`;
    Face X-ray's blended images); 0 draws nothing more, so a run without it makes the fakes it made before.
    """

    settings: BlendSettings = BlendSettings()
    share: float = 0.0
    extra_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    seed: int = 0
    landmarks: Optional[np.ndarray] = None
    other: float = 0.0
    donors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def draw(self, kind: int, epoch: int, row: int) -> np.random.Generator:
        return np.random.default_rng(sample_seed(self.seed, epoch, row, 1_000_003 + kind))

    def donor(self, rng: np.random.Generator, row: int) -> Optional[int]:
        """The row whose face goes into this fake of `row` (drawn from `rng`), or None for the row's own."""
        if self.other <= 0 or len(self.donors) < 2 or rng.random() >= self.other:
            return None
        k = int(rng.integers(len(self.donors)))
        pick = int(self.donors[k])
        return pick if pick != row else int(self.donors[(k + 1) % len(self.donors)])  # never the row itself


class ImageArrayDataset(Dataset):
    """Rows `indices` of `images` (N, H, W, 3) uint8; yields (uint8 crop HWC tensor, label).

    With a `seed`, the augmentation of each image is drawn from (seed, epoch, row) alone: the same in any
    worker process, in any order, and again after a resume, so a resumed fold sees what it would have seen.
    With `synthetic`, some items are self-blended fakes of real rows (label 1), drawn the same way; they are
    augmented like the others.
    """

    def __init__(
        self,
        images: np.ndarray,
        indices: np.ndarray,
        labels: Optional[np.ndarray],
        transform: Callable[..., dict],
        seed: Optional[int] = None,
        synthetic: Optional[SyntheticFakes] = None,
    ):
        self.images, self.indices, self.labels, self.transform = images, np.asarray(indices), labels, transform
        self.seed, self.synthetic = seed, synthetic
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # shared memory: persistent workers see it

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.indices) + (len(self.synthetic.extra_rows) if self.synthetic else 0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        epoch, n = int(self._epoch[0]), len(self.indices)
        row = self.indices[i] if i < n else self.synthetic.extra_rows[i - n]
        label = int(self.labels[row]) if self.labels is not None else -1
        image = self.images[row]
        if self.synthetic is not None:
            s = self.synthetic
            # An appended item is always a fake; one of the dataset's own real rows is one with probability `share`.
            fake = i >= n or (label == 0 and s.share > 0 and s.draw(0, epoch, row).random() < s.share)
            if fake:
                rng = s.draw(1 if i < n else 2, epoch, row)
                d = s.donor(rng, row)
                lm = s.landmarks
                donor = (None, None) if d is None else (self.images[d], None if lm is None else lm[d])
                image, label = self_blend(image, rng, s.settings, None if lm is None else lm[row], *donor)[0], 1
        if self.seed is not None:
            seed_transform(self.transform, sample_seed(self.seed, epoch, row, *([] if i < n else [2])))
        img = self.transform(image=image)["image"]
        # The shared array is read-only (Ray object store); a crop of it may be a read-only view.
        img = torch.from_numpy(np.array(img, copy=True) if not img.flags.writeable else np.ascontiguousarray(img))
        return img, label


class ShardedBatchSampler(Sampler[list[int]]):
    """The global batches of `sampler` (`batch_size` each, the last partial one dropped), each cut into
    `world_size` equal contiguous shares: this rank's share of every batch.

    Every rank must draw the same order: give each the same seeded sampler.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, rank: int, world_size: int):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not divide into {world_size} equal shares")
        self.batches = BatchSampler(sampler, batch_size, drop_last=True)
        self.sampler = sampler  # the fold loop reseeds `sampler.generator` per epoch, as for a plain loader
        self.share, self.rank = batch_size // world_size, rank

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.rank * self.share : (self.rank + 1) * self.share]

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(
    dataset: ImageArrayDataset,
    batch_size: int,
    *,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    shard: Optional[tuple[int, int]] = None,
) -> DataLoader:
    """Training loaders shuffle and drop the last partial batch (BatchNorm1d cannot train on one image).

    Reseed `loader.batch_sampler.sampler.generator` before an epoch to fix that epoch's order (with or without a
    `shard`). The order has a generator of its own: the DataLoader draws its workers' base seed from
    `loader.generator` whenever it creates an iterator, which is every epoch without workers but only the first epoch
    with persistent ones, so an order drawn from that same generator changed with the number of epochs a loader had
    run (a resumed fold with workers shuffled differently). `shard` (rank, world size): see `ShardedBatchSampler`.
    """
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if train else None
    if shard is not None:  # (rank, world size) of a data-parallel fold: this rank's share of every global batch
        return DataLoader(
            dataset,
            batch_sampler=ShardedBatchSampler(sampler, batch_size, *shard),
            num_workers=workers,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=workers > 0,
            pin_memory=pin_memory,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )
