"""Ray Tune sweeps: each trial trains `train_fold` on its folds with one sampled config; ASHA stops bad trials.

The driver decodes the training images once and hands them to every trial through the object store
(`tune.with_parameters`). A trial reports the mean validation loss of its folds after every epoch, with a
checkpoint of their states (`FoldStateStore` files), so ASHA can stop it at a rung and `Tuner.restore`
can continue it after an interruption.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from typing import Any, Optional

import numpy as np
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from raydf.config import Config, with_values
from raydf.runs.storage import RunStorage
from raydf.runs.sweep_table import DIVERGED_LOSS, baseline_point
from raydf.training.fold_state import FoldStateStore
from raydf.training.lockstep import lockstep_folds

log = logging.getLogger(__name__)

EXPERIMENT = "tune"  # Tune's own results: RUN_DIR/tune
METRIC = "val_loss"
EPOCH_KEYS = ("epoch", METRIC, "val_acc", "folds_training", "best_val_loss", "best_val_acc", "best_epoch")
HISTORY = "trial.json"  # the trial's per-epoch means, in its checkpoint next to the fold states


def search_space(space: dict[str, dict]) -> dict[str, Any]:
    """The config's `tune.space` as Ray Tune domains, keyed by dotted config key (randint's high included)."""
    domains = {
        "loguniform": lambda s: tune.loguniform(s["low"], s["high"]),
        "uniform": lambda s: tune.uniform(s["low"], s["high"]),
        "randint": lambda s: tune.randint(s["low"], s["high"] + 1),  # Tune's upper bound is exclusive
        "choice": lambda s: tune.choice(s["values"]),
        "grid": lambda s: tune.grid_search(s["values"]),
    }
    return {key: domains[spec["type"]](spec) for key, spec in space.items()}


def num_trials(cfg: Config) -> int:
    """num_samples, times the size of every grid (Tune repeats the whole grid num_samples times)."""
    return cfg.tune.num_samples * math.prod(len(s["values"]) for s in cfg.tune.space.values() if s["type"] == "grid")


def trial_folds(cfg: Config) -> list[int]:
    return list(range(cfg.train.folds)) if cfg.tune.folds == "all" else list(cfg.tune.folds)


def _trial(
    params: dict[str, Any],
    *,
    images: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    cfg: Config,
    scratch: str,
    start_weights: dict[str, dict[str, np.ndarray]],
    landmarks: Optional[np.ndarray] = None,
) -> None:
    """One trial: `params` applied to `cfg`, its folds trained in lockstep, one `tune.report` per epoch.

    `start_weights`: {backbone: fitted start weights} of the backbones the sweep tries (empty: from scratch).
    `landmarks`: the rows' face landmarks (N, 5, 2) for the self-blended fakes' masks (each trial's synth.mask).
    """
    cfg = with_values(cfg, params)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a "Checkpoint successfully created" per epoch
    torch.set_num_threads(cfg.tune.cpus_per_trial)
    os.makedirs(scratch, exist_ok=True)
    work = tempfile.mkdtemp(prefix="trial-", dir=scratch)  # this trial's fold states; Tune copies them
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint:  # restored or retried: the folds continue after the last reported epoch
            checkpoint.to_directory(work)
        storage = RunStorage(work)
        history = json.loads(storage.read_text(HISTORY)) if storage.exists(HISTORY) else []
        stores = {k: FoldStateStore(storage, k) for k in trial_folds(cfg)}
        splits = {k: (np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in stores}
        with contextlib.closing(
            lockstep_folds(images, labels, splits, cfg, stores, start_weights.get(cfg.model.name), landmarks)
        ) as epochs:
            for metrics in epochs:
                for store in stores.values():
                    # One state per fold in the checkpoint (~300 MB each): the previous one is Tune's last checkpoint.
                    storage.delete(store.previous)
                if not math.isfinite(metrics[METRIC]):
                    metrics[METRIC] = DIVERGED_LOSS
                history.append({"epoch": metrics["epoch"], METRIC: metrics[METRIC], "val_acc": metrics["val_acc"]})
                best = min(history, key=lambda h: h[METRIC])
                metrics.update(best_val_loss=best[METRIC], best_val_acc=best["val_acc"], best_epoch=best["epoch"])
                storage.write_text(HISTORY, json.dumps(history))
                print(
                    f"{tune.get_context().get_trial_name()} epoch {metrics['epoch']}/{cfg.train.epochs}: "
                    f"val loss {metrics[METRIC]:.4f} acc {metrics['val_acc']:.3f} | {_short(params)}",
                    flush=True,
                )
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_tuner(
    cfg: Config,
    storage: RunStorage,
    images: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    resources: dict[str, float],
    scratch: str,
    start_weights: Optional[dict[str, dict[str, np.ndarray]]] = None,
    landmarks: Optional[np.ndarray] = None,
) -> tune.Tuner:
    """A new Tuner for the sweep of `cfg` into RUN_DIR/tune, or the interrupted one there, restored.

    The images, `start_weights` ({backbone: state dict}) and `landmarks` (N, 5, 2) go to the object store once, for
    every trial.
    """
    trainable = tune.with_parameters(
        _trial,
        images=images,
        labels=labels,
        folds=folds,
        cfg=cfg,
        scratch=scratch,
        start_weights=start_weights or {},
        landmarks=landmarks,
    )
    trainable = tune.with_resources(trainable, {"cpu": resources["num_cpus"], "gpu": resources["num_gpus"]})
    root = str(storage.local_path()) if storage.local else storage.root.rstrip("/")  # Tune takes paths or URIs
    path = f"{root}/{EXPERIMENT}"
    if cfg.resume and tune.Tuner.can_restore(path):
        log.info(
            "resuming the sweep in %s: finished trials are kept, unfinished ones continue from their last epoch", path
        )
        return tune.Tuner.restore(path, trainable, resume_unfinished=True)
    t, point = cfg.tune, baseline_point(cfg)
    scheduler = ASHAScheduler(
        time_attr="epoch", max_t=cfg.train.epochs, grace_period=t.grace_period, reduction_factor=t.reduction_factor
    )
    return tune.Tuner(
        trainable,
        param_space=search_space(t.space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="min",
            scheduler=scheduler,
            num_samples=t.num_samples,
            # The limit goes to the generator: Tune ignores max_concurrent_trials when given a search_alg.
            search_alg=BasicVariantGenerator(
                max_concurrent=t.max_concurrent, random_state=t.seed, points_to_evaluate=[point] if point else None
            ),
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=root,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_retries),
            verbose=1,
        ),
    )


def trial_records(results: tune.ResultGrid, keys: list[str]) -> list[dict]:
    """Per trial (see `raydf.runs.sweep_table`): its name, sampled values, per-epoch metrics and error."""
    records = []
    for result in results:
        frame = result.metrics_dataframe
        epochs = (
            []
            if frame is None or METRIC not in frame
            else frame.dropna(subset=[METRIC])[[*EPOCH_KEYS]].to_dict("records")
        )
        records.append(
            {
                "trial": os.path.basename(result.path.rstrip("/")),
                "params": {k: result.config.get(k) for k in keys},
                "epochs": epochs,
                "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}",
            }
        )
    return records
