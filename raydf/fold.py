"""Train one fold: RAdam + cosine schedule, early stopping on validation loss, best weights copied.

Plain PyTorch; the Ray layer (`raydf.distributed.folds`) runs one of these per fold.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from raydf.config import Config
from raydf.dataset import ImageArrayDataset, make_loader
from raydf.engine import Precision, evaluate, train_one_epoch
from raydf.model import build_model
from raydf.transforms import eval_transform, train_transform


@dataclass
class FoldOutcome:
    """What a finished fold hands back: its best weights and how it got there."""

    weights: dict[str, np.ndarray]  # the best epoch's state dict, as numpy (zero-copy in Ray's object store)
    best_epoch: int  # 1-based
    val_loss: float
    val_acc: float
    epochs_run: int
    val_prob_fake: np.ndarray  # out-of-fold P(fake) of the validation rows, from the best weights
    device: str
    history: list[dict] = field(default_factory=list)  # one row per epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """RAdam with decoupled weight decay: the update torch_optimizer.RAdam (the seed's) applies."""
    return torch.optim.RAdam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                             eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay, decoupled_weight_decay=True)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_fold(images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
               cfg: Config, fold: int, on_epoch: Optional[Callable[[dict], None]] = None,
               device: Optional[torch.device] = None) -> FoldOutcome:
    """Train on `images[train_idx]`, select the epoch with the lowest validation loss on `images[val_idx]`.

    `images` is the decoded (N, H, W, 3) uint8 array at `data.resize`; `labels` (N,) holds 1 = fake.
    """
    device = device or default_device()
    seed = cfg.train.seed + fold
    seed_everything(seed)
    precision = Precision.resolve(cfg.train.precision, device)
    workers, pin = cfg.resources.loader_workers, device.type == "cuda"

    train_tf = train_transform(cfg.data.crop, seed=seed) if cfg.train.augment else eval_transform(cfg.data.crop)
    train_loader = make_loader(ImageArrayDataset(images, train_idx, labels, train_tf), cfg.train.batch_size,
                               train=True, workers=workers, seed=seed, pin_memory=pin)
    val_loader = make_loader(ImageArrayDataset(images, val_idx, labels, eval_transform(cfg.data.crop)),
                             cfg.train.eval_batch_size, train=False, workers=workers, pin_memory=pin)

    model = build_model(cfg.model.dropout).to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.sched.t_max,
                                                           eta_min=cfg.sched.eta_min)
    scaler = precision.scaler(device)

    best_loss, best_epoch, best_acc, stale = math.inf, 0, 0.0, 0
    best_weights: dict[str, np.ndarray] = {}
    best_probs = np.empty(0)
    history: list[dict] = []
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.time()
        lr = optimizer.param_groups[0]["lr"]
        train_m = train_one_epoch(model, train_loader, optimizer, device, precision, scaler)
        val_m, val_probs = evaluate(model, val_loader, device, precision)
        scheduler.step()  # once per epoch, as the seed did
        improved = val_m["loss"] < best_loss
        if improved:
            # A copy, not a reference: the seed kept the live model, so it predicted with last-epoch weights.
            best_weights = {k: v.detach().to("cpu", copy=True).numpy() for k, v in model.state_dict().items()}
            best_loss, best_acc, best_epoch, best_probs, stale = val_m["loss"], val_m["acc"], epoch, val_probs[:, 1], 0
        else:
            stale += 1
        row = {"fold": fold, "epoch": epoch, "train_loss": train_m["loss"], "train_acc": train_m["acc"],
               "val_loss": val_m["loss"], "val_acc": val_m["acc"], "lr": lr, "seconds": time.time() - t0,
               "best_epoch": best_epoch}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if stale >= cfg.train.patience:
            break
    return FoldOutcome(weights=best_weights, best_epoch=best_epoch, val_loss=best_loss, val_acc=best_acc,
                       epochs_run=len(history), val_prob_fake=best_probs.astype(np.float64), device=str(device),
                       history=history)
