"""Train one fold: RAdam + cosine schedule, early stopping on validation loss, best weights copied.

Plain PyTorch; the Ray layer (`raydf.distributed.folds`) runs one of these per fold, or, for a data-parallel fold,
one per worker of its process group (`raydf.distributed.ddp_fold`, `raydf.training.data_parallel`).
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
from raydf.data.dataset import ImageArrayDataset, SyntheticFakes, make_loader, sample_seed
from raydf.data.self_blend import BlendSettings, mask_landmarks
from raydf.data.transforms import FastTrainTransform, eval_transform, train_transform
from raydf.errors import DataError
from raydf.models.factory import build_model
from raydf.models.normalization import input_normalization
from raydf.models.weights import apply_start_weights
from raydf.runs.model_key import ModelKey, as_key
from raydf.training.data_parallel import DataParallel
from raydf.training.engine import Precision, StopRequested, default_device, evaluate, train_one_epoch
from raydf.training.fold_state import FoldStateStore
from raydf.training.recipe import BackboneFreeze, LrSchedule, make_weight_average, param_groups


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
    resumed_from_epoch: Optional[int] = None  # the last completed epoch a resumed fold continued after
    # data.synthetic_fakes=only: P(fake) of the validation reals' self-blended fakes (in the order of the fold's
    # validation reals), from the best weights: what calibration uses when the labelled rows hold one class only
    val_blend_prob_fake: np.ndarray = field(default_factory=lambda: np.zeros(0))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """RAdam with decoupled weight decay: the update torch_optimizer.RAdam (the seed's) applies.

    One parameter group, or [head, backbone] with `optim.backbone_lr_scale` (`raydf.training.recipe.param_groups`).
    """
    return torch.optim.RAdam(
        param_groups(model, cfg),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
        decoupled_weight_decay=True,
    )


def fold_datasets(
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: Config,
    train_tf,
    seed: int,
    landmarks: Optional[np.ndarray] = None,
) -> tuple[ImageArrayDataset, ImageArrayDataset]:
    """The fold's training and validation sets, with self-blended fakes as `data.synthetic_fakes` says:

    - off: the labelled rows as they are;
    - add: the training rows plus one self-blended fake of each training real (drawn anew every epoch);
    - only: the training reals alone, `synth.share` of them turned into fakes each epoch; the validation rows
      (all of them, for the out-of-fold table) plus one fixed self-blended fake of each validation real.

    `landmarks` (N, 5, 2), per row of `images` in its pixels (NaN: none): the fakes' masks follow them as
    `synth.mask` says.
    """
    val_tf = eval_transform(cfg.data.crop)
    mode = cfg.data.synthetic_fakes
    if mode == "off":
        return (
            ImageArrayDataset(images, train_idx, labels, train_tf, seed=seed),
            ImageArrayDataset(images, val_idx, labels, val_tf),
        )
    blend = BlendSettings(mask_scale=cfg.synth.mask_scale, edge=cfg.synth.edge)
    landmarks = mask_landmarks(cfg.synth.mask, landmarks)
    train_reals, val_reals = train_idx[labels[train_idx] == 0], val_idx[labels[val_idx] == 0]
    other = cfg.synth.other  # synth.other: the other faces come from the same side of the split (donors=)

    if len(train_reals) == 0:
        raise DataError(f"data.synthetic_fakes={mode}: this fold's training rows hold no real image to blend")
    if mode == "only" and len(train_reals) < cfg.train.batch_size:
        raise DataError(
            f"data.synthetic_fakes=only trains on the real images alone: this fold has {len(train_reals)}, fewer "
            f"than train.batch_size={cfg.train.batch_size}; lower train.batch_size or add real images"
        )
    if mode == "add":
        synthetic = SyntheticFakes(
            blend, extra_rows=train_reals, seed=seed, landmarks=landmarks, other=other, donors=train_reals
        )
        return (
            ImageArrayDataset(images, train_idx, labels, train_tf, seed=seed, synthetic=synthetic),
            ImageArrayDataset(images, val_idx, labels, val_tf),
        )
    only = SyntheticFakes(blend, cfg.synth.share, seed=seed, landmarks=landmarks, other=other, donors=train_reals)
    train_set = ImageArrayDataset(images, train_reals, labels, train_tf, seed=seed, synthetic=only)
    # Epoch 0 always: the same every epoch.
    val_synthetic = SyntheticFakes(
        blend, extra_rows=val_reals, seed=seed, landmarks=landmarks, other=other, donors=val_reals
    )
    return train_set, ImageArrayDataset(images, val_idx, labels, val_tf, synthetic=val_synthetic)


def selection_metrics(probs: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """Cross-entropy and accuracy of softmax `probs` (N, 2) against `labels` (N,) over the items `keep` (N,)."""
    p, y = probs[keep], labels[keep].astype(int)
    return {
        "loss": float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean()),
        "acc": float((p.argmax(1) == y).mean()),
    }


def train_fold(
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: Config,
    fold: int | ModelKey,
    on_epoch: Optional[Callable[[dict], None]] = None,
    device: Optional[torch.device] = None,
    state: Optional[FoldStateStore] = None,
    start_weights: Optional[dict[str, np.ndarray]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    landmarks: Optional[np.ndarray] = None,
    data_parallel: Optional[DataParallel] = None,
) -> FoldOutcome:
    """Train on `images[train_idx]`, select the epoch with the lowest validation loss on `images[val_idx]`.

    `images` is the decoded (N, H, W, 3) uint8 array at `data.resize`; `labels` (N,) holds 1 = fake.
    With a `state` store the fold saves its state after every epoch and, if a state is there already (a
    retried or resumed fold), continues after its last completed epoch. Every epoch's randomness (order,
    augmentation, dropout) is drawn from (seed, fold, epoch), so a resumed fold repeats exactly
    what an uninterrupted one would have done. `fold`: the model's `ModelKey` (fold and seed), or a bare fold index
    (the run's first seed). `start_weights` (tensors that fit the network, see
    `raydf.training.start_weights`) replace the random initial weights of a fold that starts from scratch.
    `should_stop()` is asked before every batch; True raises `StopRequested` (the saved state stays the last
    completed epoch's). `landmarks` (N, 5, 2): see `fold_datasets`.

    With `data_parallel` this process is one rank of a data-parallel fold (the process group is set up): it trains
    on its share of every global batch in DistributedDataParallel and scores its share of the validation rows; every
    rank sees the same validation metrics, so all take the same early-stopping decision. Each rank reads `state` to
    resume; rank 0 alone saves it, calls `on_epoch` and returns the best weights (the others return none).
    """
    dp = data_parallel
    main = dp is None or dp.is_main
    device = dp.device if dp is not None else device or default_device()
    key = as_key(fold, cfg)
    seed = key.rng_seed
    seed_everything(seed)
    precision = Precision.resolve(cfg.train.precision, device)
    workers, pin = cfg.resources.loader_workers, device.type == "cuda"
    if workers is None:
        workers = max(1, int(cfg.resources.cpus_per_fold) - 1) if device.type == "cuda" else 0

    if not cfg.train.augment:
        train_tf = eval_transform(cfg.data.crop)
    else:
        train_tf = FastTrainTransform(cfg.data.crop) if cfg.train.fast_augment else train_transform(cfg.data.crop)
    train_set, val_set = fold_datasets(images, labels, train_idx, val_idx, cfg, train_tf, seed, landmarks)
    shard = (dp.rank, dp.world_size) if dp is not None else None
    train_loader = make_loader(
        train_set, cfg.train.batch_size, train=True, workers=workers, seed=seed, pin_memory=pin, shard=shard
    )
    val_rows = val_set if dp is None else torch.utils.data.Subset(val_set, dp.shard_rows(len(val_set)).tolist())
    val_loader = make_loader(val_rows, cfg.train.eval_batch_size, train=False, workers=workers, pin_memory=pin)
    # The epoch chosen on: with `only`, the validation reals and their self-blended fakes (labelled fakes are scored
    # for the out-of-fold table, but choosing the epoch on them would tune the fold to their kind of fake).
    n_val = len(val_idx)
    select = None
    if cfg.data.synthetic_fakes == "only":
        n_blended = len(val_set) - n_val
        select = np.concatenate([labels[val_idx] == 0, np.ones(n_blended, bool)])
        val_labels = np.concatenate([labels[val_idx], np.ones(n_blended, int)])

    model = build_model(cfg.model.dropout, cfg.model.name, cfg.model.head_init)
    norm = input_normalization(cfg.model)  # what the start weights expect (ImageNet's from scratch)
    if start_weights is not None:  # np.array: a writable copy of the object store's read-only view
        apply_start_weights(model, {k: torch.from_numpy(np.array(v)) for k, v in start_weights.items()})
    model = model.to(device, memory_format=torch.channels_last)
    if dp is not None and dp.sync_bn:  # BatchNorm statistics over the global batch (same parameter names)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # The compiled module shares the parameters; state dicts are taken from `model` (no "_orig_mod." prefix).
    net = torch.compile(model) if cfg.train.compile else model
    optimizer = make_optimizer(model, cfg)
    scheduler = LrSchedule(optimizer, cfg.sched, steps_per_epoch=len(train_loader))
    scaler = precision.scaler(device)
    freeze = BackboneFreeze(model, cfg)
    # With train.ema the average is what is validated, selected as best and handed back; else the model itself.
    ema = make_weight_average(model, cfg.train)
    evaluated, eval_net = model, net
    if ema is not None:
        evaluated = ema.module
        eval_net = torch.compile(evaluated) if cfg.train.compile else evaluated

    stop = should_stop
    if dp is not None:
        # Every rank polls at its own moment: they stop together, at the first batch where any of them saw it.
        stop = lambda: dp.any(bool(should_stop and should_stop()))  # noqa: E731
        if ema is None:  # evaluated without the DDP wrapper: its forward runs collectives (uneven shards)
            eval_net = torch.compile(model) if cfg.train.compile else model
    train_net, wrapped_for = net, None

    def after_step() -> None:
        scheduler.after_step()
        if ema is not None:
            ema.update(model)

    best = {"loss": math.inf, "epoch": 0, "acc": 0.0, "weights": {}, "probs": torch.empty(0)}
    history: list[dict] = []
    stale, done_epochs, resumed_from = 0, 0, None
    saved = state.load() if state else None
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        best, history, stale, done_epochs = saved["best"], saved["history"], saved["stale"], saved["epoch"]
        if best["weights"] is None:  # saved in its best epoch: the best weights are the evaluated module's
            weights = saved["model"] if ema is None else saved["ema"]["module"]
            best["weights"] = {k: v.clone() for k, v in weights.items()}
        resumed_from = done_epochs

    for epoch in range(done_epochs + 1, cfg.train.epochs + 1):
        if stale >= cfg.train.patience:
            break
        t0 = time.time()
        # Dropout; another draw per rank of a data-parallel fold (not the same masks on every share).
        torch.manual_seed(sample_seed(seed, epoch, *([] if main else [2, dp.rank])))
        train_loader.batch_sampler.sampler.generator.manual_seed(sample_seed(seed, epoch, 1))  # order
        train_set.set_epoch(epoch)  # augmentation
        frozen = freeze.apply(epoch)
        if dp is not None and frozen != wrapped_for:  # DDP reduces what required a gradient when it was wrapped
            train_net = dp.wrap(model)
            train_net = torch.compile(train_net) if cfg.train.compile else train_net
            wrapped_for = frozen
        # The head's (or the only group's) learning rate at the epoch's first step, and the backbone's (0 if frozen).
        lr, lr_backbone = optimizer.param_groups[0]["lr"], 0.0 if frozen else optimizer.param_groups[-1]["lr"]
        train_m = train_one_epoch(
            train_net, train_loader, optimizer, device, precision, scaler, stop, norm, on_step=after_step
        )
        gather = None
        if dp is not None:
            train_m = dp.mean(train_m)
            dp.sync_buffers(evaluated)  # every rank scores rank 0's weights (BatchNorm statistics included)
            gather = dp.gather_cat
        # A data-parallel fold's shares may differ by a batch: its ranks agree on stopping around, not inside, it.
        val_m, val_probs = evaluate(
            eval_net, val_loader, device, precision, should_stop if dp is None else None, norm, gather
        )
        if dp is not None and stop():
            raise StopRequested()
        if select is not None:
            val_m = selection_metrics(val_probs, val_labels, select)
        scheduler.after_epoch()  # the cosine steps once per epoch, as the seed's did
        if val_m["loss"] < best["loss"]:
            # A copy, not a reference: the seed kept the live model, so it predicted with last-epoch weights.
            best = {
                "loss": val_m["loss"],
                "epoch": epoch,
                "acc": val_m["acc"],
                "weights": {k: v.detach().to("cpu", copy=True) for k, v in evaluated.state_dict().items()}
                if main
                else {},
                "probs": torch.from_numpy(val_probs[:n_val, 1].copy()),  # the labelled rows: out-of-fold
                "blend_probs": torch.from_numpy(val_probs[n_val:, 1].copy()),  # their self-blended fakes (only)
            }
            stale = 0
        else:
            stale += 1
        row = {
            **key.tags(),  # fold, and seed in a run of several seeds
            "epoch": epoch,
            "train_loss": train_m["loss"],
            "train_acc": train_m["acc"],
            "val_loss": val_m["loss"],
            "val_acc": val_m["acc"],
            "lr": lr,
            "lr_backbone": lr_backbone,
            "seconds": time.time() - t0,
            "best_epoch": best["epoch"],
        }
        history.append(row)
        if state and main:
            # In an improving epoch the best weights are the evaluated module's: not stored twice (94 MB at fp32).
            best_saved = best | {"weights": None} if best["epoch"] == epoch else best
            state.save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": None if ema is None else ema.state_dict(),
                    "best": best_saved,
                    "history": history,
                    "stale": stale,
                }
            )
        if on_epoch and main:
            on_epoch(row)
    return FoldOutcome(
        weights={k: v.numpy() for k, v in best["weights"].items()},
        best_epoch=best["epoch"],
        val_loss=best["loss"],
        val_acc=best["acc"],
        epochs_run=len(history),
        val_prob_fake=best["probs"].numpy().astype(np.float64),
        # a state saved before this was kept has none
        val_blend_prob_fake=best.get("blend_probs", torch.zeros(0)).numpy().astype(np.float64),
        device=str(device),
        history=history,
        resumed_from_epoch=resumed_from,
    )
