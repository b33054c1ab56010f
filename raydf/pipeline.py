"""A training run, end to end: catalog -> folds -> decode once -> K fold tasks -> OOF -> soft vote -> summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Collection, Optional

import numpy as np
import pandas as pd
import ray

from raydf.catalog import read_test, read_train
from raydf.checkpoint import atomic_write, save_fold_checkpoint
from raydf.config import Config, check_data_paths, to_dict, to_yaml
from raydf.demo import ensure_demo
from raydf.distributed.folds import run_folds
from raydf.distributed.inference import soft_vote_predict
from raydf.distributed.session import fold_resources, ray_session
from raydf.errors import ConfigError, DataError, find_user_error
from raydf.folds import assign_folds, check_splittable
from raydf.metrics import classification_metrics
from raydf.preflight import CheckedInputs, preflight
from raydf.runlog import run_log
from raydf.submission import build_submission

log = logging.getLogger(__name__)

SUMMARY_FOLD_KEYS = ("fold", "best_epoch", "val_loss", "val_acc", "epochs_run", "started_at", "finished_at",
                     "node_id", "pid", "attempts", "resumed_from_epoch")


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    _write_text(path, frame.to_csv(index=False))


def resolve_data(cfg: Config) -> tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """The training and test tables; no `data.train` means the built-in demo set (generated once)."""
    train_spec, test_spec = cfg.data.train, cfg.data.test
    if train_spec is None:
        d = cfg.demo
        demo = ensure_demo(n_train=d.n_train, n_test=d.n_test, size=d.size, seed=d.seed, strength=d.strength)
        log.info("no data.train given: using the built-in demo set at %s", demo.root)
        train_spec, test_spec = demo.train, test_spec or demo.test
    train = read_train(train_spec, cfg.data.train_root, cfg.train.group_by)
    test = read_test(test_spec, cfg.data.test_root) if test_spec else None
    return train, test


def new_run_dir(cfg: Config, create: bool = True) -> Path:
    """`run_dir`, or runs/<timestamp>; an existing non-empty run directory is never overwritten.

    `create=False` only checks, so a run that stops in its pre-flight check leaves nothing behind.
    """
    run_dir = Path(cfg.run_dir or time.strftime("runs/%Y%m%d-%H%M%S"))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run_dir {run_dir} already exists and is not empty: choose another run_dir "
                          f"(finished runs are never overwritten)")
    if create:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def _check_fold_sizes(folds: np.ndarray, batch_size: int) -> None:
    for k in np.unique(folds):
        n_train = int((folds != k).sum())
        if n_train < batch_size:
            raise DataError(f"fold {k} has {n_train} training images, fewer than train.batch_size={batch_size}: "
                            f"lower train.batch_size or train.folds, or add images")


def train(cfg: Config) -> Path:
    """Run the whole K-fold training and inference; returns the run directory.

    Every input is checked before any training: config paths, tables, then each image (the pre-flight,
    `raydf.preflight`); folds are assigned to the usable images only.
    """
    t_start = time.time()
    check_data_paths(cfg)
    train_df, test_df = resolve_data(cfg)
    check_splittable(train_df, cfg.train.folds, cfg.train.split)  # table errors first: they cost no decoding
    cfg.run_dir = str(new_run_dir(cfg, create=False))
    inputs = preflight(train_df, test_df, cfg.data.resize, cfg.data.decode_threads, cfg.data.on_bad)
    folds = assign_folds(inputs.train, cfg.train.folds, cfg.train.seed, cfg.train.split, content=inputs.content)
    _check_fold_sizes(folds, cfg.train.batch_size)
    run_dir = new_run_dir(cfg)
    with run_log(run_dir / "raydf.log"):
        return _train_checked(cfg, run_dir, inputs, test_df, folds, t_start)


def _train_checked(cfg: Config, run_dir: Path, inputs: CheckedInputs, test_df: Optional[pd.DataFrame],
                   folds: np.ndarray, t_start: float) -> Path:
    """Everything after the checks: run files, the fold tasks, OOF, the soft vote, summary.json."""
    train_df, images = inputs.train, inputs.images
    _write_text(run_dir / "config.yaml", to_yaml(cfg))
    _write_csv(run_dir / "folds.csv", train_df.assign(fold=folds))
    _write_csv(run_dir / "bad_inputs.csv", inputs.bad)  # written even when empty: "checked, none found"
    _write_csv(run_dir / "duplicates.csv", inputs.duplicates)
    n_bad = inputs.bad_counts()
    log.info("run directory %s: %d training images in %d folds%s%s", run_dir, len(train_df), cfg.train.folds,
             f" ({n_bad['train']} unreadable left out)" if n_bad["train"] else "",
             f", {len(test_df)} test images" + (f" ({n_bad['test']} unreadable, flagged)" if n_bad["test"] else "")
             if test_df is not None else "")
    labels = train_df["label"].to_numpy(np.int64)
    log.info("decoded %d images to %dx%d (%.0f MB, shared by every fold)", len(images), cfg.data.resize,
             cfg.data.resize, images.nbytes / 2**20)

    with ray_session(cfg.ray.address):
        resources = fold_resources(cfg)
        images_ref, labels_ref = ray.put(images), ray.put(labels)
        del images  # the object store holds the one copy the folds read

        def on_done(info: dict, weights_ref: ray.ObjectRef) -> None:
            meta = {k: info[k] for k in SUMMARY_FOLD_KEYS} | {"config": to_dict(cfg)}
            save_fold_checkpoint(run_dir / "checkpoints" / f"fold{info['fold']}.pt", ray.get(weights_ref), meta)
            log.info("fold %d done: best epoch %d, val loss %.4f, val acc %.3f (%d epochs, %.0fs)", info["fold"],
                     info["best_epoch"], info["val_loss"], info["val_acc"], info["epochs_run"],
                     info["finished_at"] - info["started_at"])

        splits = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(cfg.train.folds)]
        results = run_folds(images_ref, labels_ref, splits, cfg, resources, on_done=on_done)
        infos = [info for _, info in results]
        del images_ref

        oof = _write_oof(run_dir, train_df, folds, infos)
        _write_csv(run_dir / "history.csv", pd.DataFrame([row for info in infos for row in info["history"]]))
        summary = {
            "folds": [{k: info[k] for k in SUMMARY_FOLD_KEYS} for info in infos],
            "cv": classification_metrics(oof["label"], oof["prob_fake"]),
        }
        if test_df is not None:
            t0 = time.time()
            readable = [p for i, p in enumerate(test_df["path"]) if i not in inputs.test_bad]
            try:
                pred = soft_vote_predict(
                    readable, [ref for ref, _ in results], resize=cfg.data.resize, crop=cfg.data.crop,
                    dropout=cfg.model.dropout, batch_size=cfg.predict.batch_size, actors=cfg.predict.actors,
                    gpus_per_actor=1.0 if resources["num_gpus"] > 0 else 0.0, precision=cfg.train.precision)
            except Exception as e:  # a test file changed since the pre-flight: say so, and how to resume
                user = find_user_error(e)
                if user is None:
                    raise
                images = cfg.data.test or "TEST_SET"
                raise DataError(f"predicting the test set failed: {user}\nThe fold checkpoints are saved: once "
                                f"fixed, run python -m raydf.predict --run {run_dir} --images {images}") from e
            sub = write_submission(run_dir / "submission.csv", test_df, pred, inputs.test_bad, inputs.prior)
            log.info("soft vote over %d test images in %.1fs", len(readable), time.time() - t0)
            if "label" in test_df.columns:  # scored as submitted: unreadable images count with the prior
                summary["test"] = classification_metrics(test_df["label"], sub["prob_fake"])
    summary["bad_inputs"] = inputs.bad_counts()
    summary["wall_seconds"] = time.time() - t_start
    _write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return run_dir


def _write_oof(run_dir: Path, train_df: pd.DataFrame, folds: np.ndarray, infos: list[dict]) -> pd.DataFrame:
    prob = np.full(len(train_df), np.nan)
    for info in infos:
        prob[info["val_index"]] = info["val_prob_fake"]
    oof = pd.DataFrame({"path": train_df["path"], "label": train_df["label"], "fold": folds, "prob_fake": prob})
    _write_csv(run_dir / "oof.csv", oof)
    return oof


def write_submission(path: Path, test_df: pd.DataFrame, pred: pd.DataFrame, bad_rows: Collection[int] = (),
                     prior: float = 0.5) -> pd.DataFrame:
    """`image,label,prob_fake` in the test table's row order (label: argmax of the soft vote, 1 = fake).

    `pred` holds the readable rows only; `bad_rows` get `prior` and `flag=bad_input` (`raydf.submission`).
    """
    sub = build_submission(test_df, pred["prob_fake"].to_numpy(), bad_rows, prior)
    _write_csv(path, sub)
    return sub
