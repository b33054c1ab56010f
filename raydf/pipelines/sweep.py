"""A sweep, end to end: check the inputs, write the sweep directory, run the Ray Tune sweep
(`raydf.distributed.tune`), then its table, plot and best config, and optionally the K-fold training with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import tempfile

import numpy as np

from raydf import signals
from raydf.config import Config, check_data_paths
from raydf.data.face_store import manifest_landmarks
from raydf.distributed.data import local_images, plan_cache
from raydf.distributed.preflight import preflight_check
from raydf.distributed.session import checked_resources, ray_session
from raydf.distributed.tune import make_tuner, num_trials, trial_folds, trial_records
from raydf.errors import ConfigError, Interrupted
from raydf.pipelines.faces import with_extracted_faces
from raydf.pipelines.training import train
from raydf.runs.model_key import check_one_seed
from raydf.runs.resume import resume_config
from raydf.runs.run_dir import (
    create_run_dir,
    data_specs,
    empty_run_dir,
    read_fold_table,
    read_tables,
    reopen_run_dir,
)
from raydf.runs.storage import RunStorage
from raydf.runs.sweep_table import SweepFailed, write_report
from raydf.training.start_weights import start_weights_by_backbone

log = logging.getLogger(__name__)


class SweepInterrupted(Interrupted):
    """Ctrl-C or SIGTERM: Tune saved the sweep's state; `resume=RUN_DIR` continues it."""

    @classmethod
    def resumable(cls, run_dir: str, exit_code: int) -> SweepInterrupted:
        return cls(
            f"interrupted: finished trials and every reported epoch are saved in {run_dir}. Resume "
            f"with:\n  python -m raydf.tune resume={run_dir}",
            exit_code,
        )


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
        raise SweepInterrupted(
            f"interrupted ({signals.name(stop)}) before the sweep directory was written: run "
            f"the same command again to start over",
            signals.exit_code(stop),
        ) from None


def _run_sweep(cfg: Config) -> str:
    check_one_seed(cfg)
    starts = start_weights_by_backbone(cfg)  # before any work: a file that does not fit stops the sweep here
    if not cfg.resume:  # data.faces: the trials train on the crops (a resumed sweep's config names them)
        empty_run_dir(cfg, "runs/tune-%Y%m%d-%H%M%S")  # names the run directory before the copy below
        cfg = with_extracted_faces(cfg)
    scratch: list[str] = []
    try:
        return _sweep_in_session(cfg, starts, scratch)
    finally:
        # Once more after the Ray session ended: Tune's fit() returns before its trial actors are gone, and a trial's
        # last write into its scratch folder could land after the removal inside the session (seen: a trial-*
        # folder left behind). A local instance's workers are dead now; a cluster's nodes clean their own /tmp.
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _sweep_in_session(cfg: Config, starts: dict, scratch_dirs: list[str]) -> str:
    with ray_session(cfg.ray.address):
        # Before any work: Tune would only warn, and wait forever, for GPUs the cluster does not have.
        resources = checked_resources(
            cfg.tune.cpus_per_trial, cfg.tune.gpus_per_trial, "tune.cpus_per_trial", "tune.gpus_per_trial"
        )
        if cfg.resume:
            storage, table, _ = reopen_run_dir(cfg)
            plan, decoded = plan_cache(table["path"].tolist(), cfg), None
            if storage.exists("checkpoints") or storage.exists("state"):
                raise ConfigError(
                    f"resume={cfg.run_dir} is a training run, not a sweep: continue it with "
                    f"python -m raydf.train resume={cfg.run_dir}"
                )
        else:
            check_data_paths(cfg)
            tables = read_tables(cfg, with_test=False)
            plan = plan_cache(tables[0]["path"].tolist(), cfg)
            table, decoded = read_fold_table(
                cfg,
                tables,
                decode=plan.mode in ("memory", "disk", "off"),
                check=preflight_check(len(tables[0]), cfg.data.preflight_spread_min),
            )
            storage = create_run_dir(cfg, table, default="runs/tune-%Y%m%d-%H%M%S")
        images = local_images(table["path"].tolist(), cfg, plan, decoded)
        labels, folds = table["label"].to_numpy(np.int64), table["fold"].to_numpy(np.int64)
        # Whatever a trial's data.synthetic_fakes and synth.mask: the training set's landmarks, if it has them.
        landmarks = manifest_landmarks(data_specs(cfg)[0], table["path"].tolist(), cfg.data.resize)
        log.info(
            "sweep in %s: %d trials of up to %d epochs on fold(s) %s, %g CPU and %g GPU each",
            cfg.run_dir,
            num_trials(cfg),
            cfg.train.epochs,
            trial_folds(cfg),
            resources["num_cpus"],
            resources["num_gpus"],
        )
        scratch = _scratch_dir(storage)
        scratch_dirs.append(scratch)
        shutil.rmtree(scratch, ignore_errors=True)  # what a killed driver of this sweep left
        try:
            tuner = make_tuner(cfg, storage, images, labels, folds, resources, scratch, starts, landmarks)
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
