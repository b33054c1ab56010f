"""Ray Tune sweeps: each trial trains `train_fold` on its folds with one sampled config; ASHA stops bad trials.

The driver decodes the training images once and hands them to every trial through the object store
(`tune.with_parameters`). A trial reports the mean validation loss of its folds after every epoch, with a
checkpoint of their states (`FoldStateStore` files), so ASHA can stop it at a rung and `Tuner.restore`
can continue it after an interruption.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
from typing import Any

import numpy as np
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from raydf import signals
from raydf.config import Config, with_values
from raydf.distributed.session import checked_resources, ray_session
from raydf.errors import ConfigError, Interrupted
from raydf.fold_state import FoldStateStore
from raydf.lockstep import lockstep_folds
from raydf.pipeline import create_run_dir, decode_table, read_fold_table, reopen_run_dir, train
from raydf.resume import resume_config
from raydf.storage import RunStorage
from raydf.sweep import DIVERGED_LOSS, SweepFailed, baseline_point, write_report

log = logging.getLogger(__name__)

EXPERIMENT = "tune"  # Tune's own results: RUN_DIR/tune
METRIC = "val_loss"
EPOCH_KEYS = ("epoch", METRIC, "val_acc", "folds_training", "best_val_loss", "best_val_acc", "best_epoch")
HISTORY = "trial.json"  # the trial's per-epoch means, in its checkpoint next to the fold states


def search_space(space: dict[str, dict]) -> dict[str, Any]:
    """The config's `tune.space` as Ray Tune domains, keyed by dotted config key (randint's high included)."""
    domains = {"loguniform": lambda s: tune.loguniform(s["low"], s["high"]),
               "uniform": lambda s: tune.uniform(s["low"], s["high"]),
               "randint": lambda s: tune.randint(s["low"], s["high"] + 1),  # Tune's upper bound is exclusive
               "choice": lambda s: tune.choice(s["values"]),
               "grid": lambda s: tune.grid_search(s["values"])}
    return {key: domains[spec["type"]](spec) for key, spec in space.items()}


def num_trials(cfg: Config) -> int:
    """num_samples, times the size of every grid (Tune repeats the whole grid num_samples times)."""
    return cfg.tune.num_samples * math.prod(len(s["values"]) for s in cfg.tune.space.values() if s["type"] == "grid")


def trial_folds(cfg: Config) -> list[int]:
    return list(range(cfg.train.folds)) if cfg.tune.folds == "all" else list(cfg.tune.folds)


def _trial(params: dict[str, Any], *, images: np.ndarray, labels: np.ndarray, folds: np.ndarray, cfg: Config,
           scratch: str) -> None:
    """One trial: `params` applied to `cfg`, its folds trained in lockstep, one `tune.report` per epoch."""
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
        with contextlib.closing(lockstep_folds(images, labels, splits, cfg, stores)) as epochs:
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
                print(f"{tune.get_context().get_trial_name()} epoch {metrics['epoch']}/{cfg.train.epochs}: "
                      f"val loss {metrics[METRIC]:.4f} acc {metrics['val_acc']:.3f} | {_short(params)}", flush=True)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_tuner(cfg: Config, storage: RunStorage, images: np.ndarray, labels: np.ndarray, folds: np.ndarray,
               resources: dict[str, float], scratch: str) -> tune.Tuner:
    """A new Tuner for the sweep of `cfg` into RUN_DIR/tune, or the interrupted one there, restored."""
    trainable = tune.with_parameters(_trial, images=images, labels=labels, folds=folds, cfg=cfg, scratch=scratch)
    trainable = tune.with_resources(trainable, {"cpu": resources["num_cpus"], "gpu": resources["num_gpus"]})
    root = str(storage.local_path()) if storage.local else storage.root.rstrip("/")  # Tune takes paths or URIs
    path = f"{root}/{EXPERIMENT}"
    if cfg.resume and tune.Tuner.can_restore(path):
        log.info("resuming the sweep in %s: finished trials are kept, unfinished ones continue from their last "
                 "epoch", path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True)
    t, point = cfg.tune, baseline_point(cfg)
    scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs, grace_period=t.grace_period,
                              reduction_factor=t.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=search_space(t.space),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="min", scheduler=scheduler, num_samples=t.num_samples,
            # The limit goes to the generator: Tune ignores max_concurrent_trials when given a search_alg.
            search_alg=BasicVariantGenerator(max_concurrent=t.max_concurrent, random_state=t.seed,
                                             points_to_evaluate=[point] if point else None),
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=EXPERIMENT, storage_path=root,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_retries), verbose=1))


class SweepInterrupted(Interrupted):
    """Ctrl-C or SIGTERM: Tune saved the sweep's state; `resume=RUN_DIR` continues it."""

    @classmethod
    def resumable(cls, run_dir: str, exit_code: int) -> "SweepInterrupted":
        return cls(f"interrupted: finished trials and every reported epoch are saved in {run_dir}. Resume "
                   f"with:\n  python -m raydf.tune resume={run_dir}", exit_code)


def trial_records(results: tune.ResultGrid, keys: list[str]) -> list[dict]:
    """Per trial (see `raydf.sweep`): its name, sampled values, per-epoch metrics and error."""
    records = []
    for result in results:
        frame = result.metrics_dataframe
        epochs = [] if frame is None or METRIC not in frame else \
            frame.dropna(subset=[METRIC])[[*EPOCH_KEYS]].to_dict("records")
        records.append({"trial": os.path.basename(result.path.rstrip("/")),
                        "params": {k: result.config.get(k) for k in keys}, "epochs": epochs,
                        "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}"})
    return records


def run_sweep(cfg: Config) -> str:
    """Run (or, with `cfg.resume`, continue) the sweep of `cfg` and write its outputs; returns the run dir.

    RUN_DIR: config.yaml, folds.csv, tune/ (Tune's results and checkpoints), trials.csv, sweep.png,
    best.yaml; with `tune.then_train`, the K-fold training with best.yaml in RUN_DIR/train.
    """
    # num_to_keep=1 (a fold state is ~300 MB) makes Tune snapshot the sweep after every checkpoint, by design:
    # its warning that snapshots are frequent says nothing to act on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        return _run_sweep(cfg)
    except KeyboardInterrupt as stop:  # outside Tune's own graceful stop (raydf.signals)
        if cfg.run_dir and RunStorage(cfg.run_dir).exists("folds.csv"):
            raise SweepInterrupted.resumable(cfg.run_dir, signals.exit_code(stop)) from None
        raise SweepInterrupted(f"interrupted ({stop or 'SIGINT'}) before the sweep directory was written: run "
                               f"the same command again to start over", signals.exit_code(stop)) from None


def _run_sweep(cfg: Config) -> str:
    with ray_session(cfg.ray.address):
        # Before any work: Tune would only warn, and wait forever, for GPUs the cluster does not have.
        resources = checked_resources(cfg.tune.cpus_per_trial, cfg.tune.gpus_per_trial, "tune.cpus_per_trial",
                                      "tune.gpus_per_trial")
        if cfg.resume:
            storage, table, _ = reopen_run_dir(cfg)
            if storage.exists("checkpoints") or storage.exists("state"):
                raise ConfigError(f"resume={cfg.run_dir} is a training run, not a sweep: continue it with "
                                  f"python -m raydf.train resume={cfg.run_dir}")
        else:
            table, _ = read_fold_table(cfg)
            storage = create_run_dir(cfg, table, default="runs/tune-%Y%m%d-%H%M%S")
        images = decode_table(cfg, table)
        labels, folds = table["label"].to_numpy(np.int64), table["fold"].to_numpy(np.int64)
        log.info("sweep in %s: %d trials of up to %d epochs on fold(s) %s, %g CPU and %g GPU each", cfg.run_dir,
                 num_trials(cfg), cfg.train.epochs, trial_folds(cfg), resources["num_cpus"], resources["num_gpus"])
        scratch = _scratch_dir(storage)
        shutil.rmtree(scratch, ignore_errors=True)  # what a killed driver of this sweep left
        try:
            tuner = make_tuner(cfg, storage, images, labels, folds, resources, scratch)
            del images  # with_parameters put it in the object store
            with signals.sigterm_as_sigint():  # Tune stops gracefully on SIGINT: let SIGTERM do the same
                results = tuner.fit()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        # Tune caught a stop signal and saved (a SIGTERM is recorded by raydf.signals; Ctrl-C only by Tune)
        if signals.received() or results.num_terminated + results.num_errors < len(results):
            raise SweepInterrupted.resumable(cfg.run_dir, 128 + (signals.received() or signal.SIGINT))
        records = trial_records(results, list(cfg.tune.space))
        if not any(r["epochs"] for r in records):
            errors = "\n  ".join(r["error"] for r in records if r["error"])
            raise SweepFailed(f"no trial finished an epoch. Errors:\n  {errors[:3000] or 'none reported'}")
        best = write_report(storage, cfg, records)
        if cfg.tune.then_train:
            log.info("training all %d folds with the best configuration into %s", best.train.folds, best.run_dir)
            train(_resumable(best))
    return cfg.run_dir


def _scratch_dir(storage: RunStorage) -> str:
    """Node-local room for the trials' current fold states (Tune keeps their checkpoints in the run directory).
    Named after the run directory, so that resuming a killed sweep also removes what it left."""
    root = str(storage.local_path()) if storage.local else storage.root
    return os.path.join(tempfile.gettempdir(), f"raydf-tune-{hashlib.sha1(root.encode()).hexdigest()[:12]}")


def _resumable(best: Config) -> Config:
    """The best config, or the run it already started (a resumed sweep whose training was interrupted)."""
    train_storage = RunStorage(best.run_dir)
    if train_storage.exists("config.yaml") and train_storage.exists("folds.csv"):
        return resume_config(best.run_dir)
    return best
