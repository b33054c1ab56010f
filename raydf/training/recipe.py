"""The fine-tuning recipe around a fold's optimizer, in plain PyTorch: what a pretrained start needs and a start from
scratch does not.

- `optim.backbone_lr_scale`: two RAdam groups, the classifier head at `optim.lr` and the backbone (everything else) at
  `optim.lr x scale`; the schedule scales both.
- `train.freeze_backbone_epochs`: the backbone gets no update in the first N epochs.
- `sched.warmup_epochs`: a linear warm-up per optimizer step before (and on top of) the cosine schedule.
- `train.ema`: an exponential moving average of the weights (timm's ModelEmaV3), updated after every step.

With every key at its default the fold computes exactly what it did before these keys existed: one parameter group,
CosineAnnealingLR stepped per epoch, no average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from raydf.config import Config, SchedConfig, TrainConfig
from raydf.models.weights import head_keys


def head_parameter_names(model: torch.nn.Module, name: str) -> set[str]:
    """Names of the classifier head's parameters (timm: `get_classifier()`; InceptionResnetV1: `logits`)."""
    keys = head_keys(model, name)
    names = {n for n, _ in model.named_parameters() if n in keys}
    if not names:
        raise ValueError(f"{name}: found no classifier head among its parameters (looked for {sorted(keys)})")
    return names


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: [head, backbone] with their own learning rates when
    `optim.backbone_lr_scale` != 1; else one group of every parameter, as before the key existed (so the optimizer
    state of a run started then still loads)."""
    scale = cfg.optim.backbone_lr_scale
    if scale == 1.0:
        return [{"params": list(model.parameters())}]
    head = head_parameter_names(model, cfg.model.name)
    named = list(model.named_parameters())
    return [
        {"name": "head", "params": [p for n, p in named if n in head], "lr": cfg.optim.lr},
        {"name": "backbone", "params": [p for n, p in named if n not in head], "lr": cfg.optim.lr * scale},
    ]


class BackboneFreeze:
    """`train.freeze_backbone_epochs`: the backbone's parameters are left out of the first N epochs' updates.

    Frozen means `requires_grad=False`, not a learning rate of 0: no gradient is computed for the backbone (a
    backward pass through the head alone, much cheaper), RAdam skips parameters without a gradient entirely (no
    weight decay, no moments, no step count), so each backbone parameter's optimizer state begins at its first real
    update, with RAdam's own rectified start; and the saved optimizer state holds nothing a resumed fold would not
    rebuild, since every epoch sets the flags from its number alone. BatchNorm layers stay in training mode: batch
    statistics normalise the features the head learns on, as they will once the backbone trains (unfreezing does
    not change the features under the head), and the running statistics follow the new data, so validation sees
    the same normalisation. The frozen backbone's weights are unchanged; its BatchNorm running statistics are not.
    """

    def __init__(self, model: torch.nn.Module, cfg: Config):
        self.epochs = cfg.train.freeze_backbone_epochs
        self.model = model
        self.head = head_parameter_names(model, cfg.model.name) if self.epochs > 0 else set()

    def frozen(self, epoch: int) -> bool:
        return epoch <= self.epochs

    def apply(self, epoch: int) -> bool:
        """Set the backbone's `requires_grad` for this (1-based) epoch; whether it is frozen."""
        frozen = self.frozen(epoch)
        if self.epochs > 0:
            for name, p in self.model.named_parameters():
                p.requires_grad_(name in self.head or not frozen)
        return frozen


@dataclass
class WarmupCosine:
    """LambdaLR's factor for optimizer step `step` (0-based) of a group whose base learning rate is `base`.

    CosineAnnealingLR's closed form at the step's epoch (`step // steps_per_epoch`: constant within an epoch, as the
    per-epoch scheduler), times the linear warm-up `min(1, (step + 1) / warmup_steps)`.
    """

    base: float
    eta_min: float
    t_max: int
    steps_per_epoch: int
    warmup_steps: int

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        floor = self.eta_min / self.base
        cosine = floor + (1 - floor) * (1 + math.cos(math.pi * epoch / self.t_max)) / 2
        return min(1.0, (step + 1) / self.warmup_steps) * cosine


class LrSchedule:
    """`sched.*`: the learning rate of every group.

    Without warm-up: CosineAnnealingLR (T_max = sched.t_max, eta_min) stepped once per epoch, the seed's schedule.
    With `sched.warmup_epochs` > 0: one LambdaLR stepped after every optimizer step, whose factor is the same cosine
    held for each epoch times a linear ramp over the first `round(warmup_epochs x steps_per_epoch)` steps (from
    1/steps of the scheduled value up to it). One torch scheduler either way, so its `state_dict` (saved with the
    fold's state after every epoch) restores it exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, sched: SchedConfig, steps_per_epoch: int):
        self.per_step = sched.warmup_epochs > 0
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        if not self.per_step:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=sched.t_max, eta_min=sched.eta_min
            )
            return
        warmup_steps = max(1, round(sched.warmup_epochs * steps_per_epoch))
        factors = [
            WarmupCosine(g["lr"], sched.eta_min, sched.t_max, steps_per_epoch, warmup_steps)
            for g in optimizer.param_groups
        ]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self) -> None:
        if not self.per_step:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class WeightAverage:
    """`train.ema`: timm's ModelEmaV3 of `model`, updated after every optimizer step with the step's number.

    Parameters and floating-point buffers are averaged (BatchNorm's running mean and variance: the statistics of
    the averaged network follow those of the trained one), integer buffers copied (`num_batches_tracked`). The
    first update copies the model (timm: decay 0 at step 1); with `train.ema_warmup` the decay then ramps up as
    min(train.ema, 1 - (1 + step)^(-2/3)). Kept in the model's dtype and device (fp32 weights under autocast).
    """

    def __init__(self, model: torch.nn.Module, train: TrainConfig):
        from timm.utils import ModelEmaV3  # timm takes seconds to import: only when asked for

        self.ema = ModelEmaV3(model, decay=train.ema, use_warmup=train.ema_warmup)
        self.updates = 0

    @property
    def module(self) -> torch.nn.Module:
        return self.ema.module

    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        self.ema.update(model, step=self.updates)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.ema.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["module"])
        self.updates = state["updates"]


def make_weight_average(model: torch.nn.Module, train: TrainConfig) -> Optional[WeightAverage]:
    return WeightAverage(model, train) if train.ema > 0 else None
