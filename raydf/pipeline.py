"""A training run, end to end: catalog -> folds -> decode once -> K fold tasks -> OOF -> soft vote -> summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import ray

from raydf.catalog import read_test, read_train
from raydf.checkpoint import atomic_write, save_fold_checkpoint
from raydf.config import Config, to_dict, to_yaml
from raydf.console import CountProgress, FoldProgress
from raydf.demo import ensure_demo
from raydf.distributed.folds import run_folds
from raydf.distributed.inference import soft_vote_predict
from raydf.distributed.session import fold_resources, ray_session
from raydf.errors import ConfigError, DataError
from raydf.folds import assign_folds
from raydf.images import decode_images
from raydf.metrics import classification_metrics
from raydf.report import TEST_LABELS, build_report
from raydf.tensorboard_log import TensorBoardLog

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
    train = read_train(train_spec, cfg.data.train_root)
    test = read_test(test_spec, cfg.data.test_root) if test_spec else None
    return train, test


def new_run_dir(cfg: Config) -> Path:
    """`run_dir`, or runs/<timestamp>; an existing non-empty run directory is never overwritten."""
    run_dir = Path(cfg.run_dir or time.strftime("runs/%Y%m%d-%H%M%S"))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run_dir {run_dir} already exists and is not empty: choose another run_dir "
                          f"(finished runs are never overwritten)")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def _check_fold_sizes(folds: np.ndarray, batch_size: int) -> None:
    for k in np.unique(folds):
        n_train = int((folds != k).sum())
        if n_train < batch_size:
            raise DataError(f"fold {k} has {n_train} training images, fewer than train.batch_size={batch_size}: "
                            f"lower train.batch_size or train.folds, or add images")


def train(cfg: Config) -> Path:
    """Run the whole K-fold training and inference; returns the run directory."""
    t_start = time.time()
    train_df, test_df = resolve_data(cfg)
    folds = assign_folds(train_df, cfg.train.folds, cfg.train.seed, cfg.train.split)
    _check_fold_sizes(folds, cfg.train.batch_size)
    run_dir = new_run_dir(cfg)
    cfg.run_dir = str(run_dir)
    _write_text(run_dir / "config.yaml", to_yaml(cfg))
    _write_csv(run_dir / "folds.csv", train_df.assign(fold=folds))
    log.info("run directory %s: %d training images in %d folds%s", run_dir, len(train_df), cfg.train.folds,
             f", {len(test_df)} test images" if test_df is not None else "")

    t0 = time.time()
    images = decode_images(train_df["path"].tolist(), cfg.data.resize, cfg.data.decode_threads)
    labels = train_df["label"].to_numpy(np.int64)
    timings = {"decode_seconds": time.time() - t0}
    log.info("decoded %d images to %dx%d in %.1fs (%.0f MB, shared by every fold)", len(images), cfg.data.resize,
             cfg.data.resize, timings["decode_seconds"], images.nbytes / 2**20)

    with ray_session(cfg.ray.address):
        resources = fold_resources(cfg)
        images_ref, labels_ref = ray.put(images), ray.put(labels)
        del images  # the object store holds the one copy the folds read

        def on_done(info: dict, weights_ref: ray.ObjectRef) -> None:
            meta = {k: info[k] for k in SUMMARY_FOLD_KEYS} | {"config": to_dict(cfg)}
            path = run_dir / "checkpoints" / f"fold{info['fold']}.pt"
            save_fold_checkpoint(path, ray.get(weights_ref), meta)
            log.debug("fold %d: best weights (epoch %d) written to %s", info["fold"], info["best_epoch"], path)

        splits = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(cfg.train.folds)]
        t0 = time.time()
        # Progress events from the fold tasks feed the live display and the TensorBoard files, both on the driver.
        with (FoldProgress(cfg.train.folds, cfg.train.epochs) as display,
              TensorBoardLog(run_dir / "tensorboard") as tensorboard):
            def on_events(events: list[dict]) -> None:
                display(events)
                tensorboard(events)

            results = run_folds(images_ref, labels_ref, splits, cfg, resources, on_done=on_done, on_events=on_events)
        timings["folds_seconds"] = time.time() - t0
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
            pred = predict_paths(cfg, test_df["path"].tolist(), [ref for ref, _ in results],
                                 gpus_per_actor=1.0 if resources["num_gpus"] > 0 else 0.0)
            timings["inference_seconds"] = time.time() - t0
            write_submission(run_dir / "submission.csv", test_df, pred)
            log.info("soft vote over %d test images in %.1fs", len(test_df), timings["inference_seconds"])
            if "label" in test_df.columns:
                summary["test"] = classification_metrics(test_df["label"], pred["prob_fake"])
                _write_csv(run_dir / TEST_LABELS, test_df[["image", "label"]])
    summary["timings"] = timings
    summary["wall_seconds"] = time.time() - t_start
    _write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    build_report(run_dir)
    return run_dir


def predict_paths(cfg: Config, paths: list[str], weight_refs: list[ray.ObjectRef], gpus_per_actor: float,
                  tta: Optional[bool] = None) -> pd.DataFrame:
    """The distributed soft vote of `weight_refs` over `paths` with the config's predict settings, with progress."""
    with CountProgress(len(paths), f"soft vote of {len(weight_refs)} folds") as progress:
        return soft_vote_predict(
            paths, weight_refs, resize=cfg.data.resize, crop=cfg.data.crop, dropout=cfg.model.dropout,
            batch_size=cfg.predict.batch_size, actors=cfg.predict.actors, gpus_per_actor=gpus_per_actor,
            precision=cfg.train.precision, tta=cfg.predict.tta if tta is None else tta,
            actor_restarts=cfg.predict.actor_restarts, on_rows=progress.update)


def _write_oof(run_dir: Path, train_df: pd.DataFrame, folds: np.ndarray, infos: list[dict]) -> pd.DataFrame:
    prob = np.full(len(train_df), np.nan)
    for info in infos:
        prob[info["val_index"]] = info["val_prob_fake"]
    oof = pd.DataFrame({"path": train_df["path"], "label": train_df["label"], "fold": folds, "prob_fake": prob})
    _write_csv(run_dir / "oof.csv", oof)
    return oof


def write_submission(path: Path, test_df: pd.DataFrame, pred: pd.DataFrame) -> pd.DataFrame:
    """`image,label,prob_fake` in the test table's row order (label: argmax of the soft vote, 1 = fake)."""
    sub = pd.DataFrame({"image": test_df["image"].to_numpy(), "label": (pred["prob_fake"] > 0.5).astype(int),
                        "prob_fake": pred["prob_fake"].to_numpy()})
    _write_csv(path, sub)
    return sub
