"""What a fold loop needs to run data-parallel in plain `torch.distributed` (no Ray): shards and collectives.

Whoever starts the processes (Ray Train in `raydf.distributed.ddp_fold`, `torch.multiprocessing` in the tests)
initialises the default process group; a `DataParallel` then describes this process's part in it. The split keeps
what one worker computes: every rank draws the same global batch order from the fold's seed and takes its own
contiguous share of each global batch, the gradients of the shares are averaged (DDP's all-reduce), so each step
applies the gradient of the global batch's mean loss, and there are as many steps per epoch as with one worker
(the learning rate schedule is unchanged). Not exactly the same: BatchNorm normalises each share with its own
statistics unless `sync_bn` (GPUs), and float sums are taken in another order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    """This process's rank among `world_size` in the default process group; `device` is the one it trains on."""

    rank: int
    world_size: int
    device: torch.device
    sync_bn: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes state, checkpoints and progress, and hands the weights back."""
        return self.rank == 0

    def _flag_device(self) -> torch.device:
        # NCCL reduces tensors on the GPU only; gloo on the CPU.
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` in DistributedDataParallel: rank 0's weights broadcast to every rank, gradients averaged.

        Only parameters that require a gradient now are reduced: wrap again when that changes (a frozen backbone).
        """
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, so that every rank evaluates its weights."""
        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any (a stop request polled by each rank at its own moment)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self._flag_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (the shares are equal: the mean of the global batch)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._flag_device())
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.cpu().tolist())}

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_cat(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation shards' logits and labels joined in rank order: the whole set, in loader order."""
        parts = self.gather((logits.cpu(), labels.cpu()))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def shard_rows(self, n: int) -> np.ndarray:
        """This rank's contiguous share of `range(n)` (validation), in order; shares differ by at most one row."""
        return np.array_split(np.arange(n), self.world_size)[self.rank]
