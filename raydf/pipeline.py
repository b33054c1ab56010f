"""A training run, end to end: catalog -> folds -> decode once -> K fold tasks -> OOF -> soft vote -> summary.

A run can be resumed (`resume=RUN_DIR`): finished folds are read back from their checkpoints, unfinished
ones continue from their last saved epoch, and only missing outputs are produced again.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Optional

import numpy as np
import pandas as pd
import ray

from raydf.catalog import read_test, read_train
from raydf.checkpoint import save_fold_checkpoint, try_load_fold_checkpoint
from raydf.config import Config, to_dict, to_yaml
from raydf.demo import ensure_demo
from raydf.distributed.folds import run_folds
from raydf.distributed.inference import soft_vote_predict
from raydf.distributed.session import fold_resources, ray_session
from raydf.errors import ConfigError, DataError, RaydfError
from raydf.folds import assign_folds
from raydf.images import decode_images
from raydf.metrics import classification_metrics
from raydf.storage import RunStorage

log = logging.getLogger(__name__)

SUMMARY_FOLD_KEYS = ("fold", "best_epoch", "val_loss", "val_acc", "epochs_run", "started_at", "finished_at",
                     "node_id", "pid", "attempts", "resumed_from_epoch")


class RunInterrupted(RaydfError):
    """Ctrl-C: the tasks were cancelled and the run directory is consistent."""

    exit_code = 130


def write_csv(storage: RunStorage, rel: str, frame: pd.DataFrame) -> None:
    storage.write_text(rel, frame.to_csv(index=False))


def read_csv(storage: RunStorage, rel: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(storage.read_bytes(rel)))


def data_specs(cfg: Config) -> tuple[str, Optional[str]]:
    """Training and test specs; no `data.train` means the built-in demo set (generated once)."""
    if cfg.data.train is not None:
        return cfg.data.train, cfg.data.test
    d = cfg.demo
    demo = ensure_demo(n_train=d.n_train, n_test=d.n_test, size=d.size, seed=d.seed, strength=d.strength)
    log.info("no data.train given: using the built-in demo set at %s", demo.root)
    return str(demo.train), cfg.data.test or str(demo.test)


def _check_fold_sizes(folds: np.ndarray, batch_size: int) -> None:
    for k in np.unique(folds):
        n_train = int((folds != k).sum())
        if n_train < batch_size:
            raise DataError(f"fold {k} has {n_train} training images, fewer than train.batch_size={batch_size}: "
                            f"lower train.batch_size or train.folds, or add images")


def read_fold_table(cfg: Config) -> tuple[pd.DataFrame, Optional[str]]:
    """The training table with its `fold` column, and the test spec (the demo set is generated if needed)."""
    train_spec, test_spec = data_specs(cfg)
    table = read_train(train_spec, cfg.data.train_root)
    table["fold"] = assign_folds(table, cfg.train.folds, cfg.train.seed, cfg.train.split)
    _check_fold_sizes(table["fold"].to_numpy(), cfg.train.batch_size)
    return table, test_spec


def create_run_dir(cfg: Config, table: pd.DataFrame, default: str = "runs/%Y%m%d-%H%M%S") -> RunStorage:
    """A new run directory (`run_dir`, else `default` with the time filled in) with config.yaml and folds.csv.

    Refuses a non-empty one: finished runs are never overwritten.
    """
    cfg.run_dir = cfg.run_dir or time.strftime(default)
    storage = RunStorage(cfg.run_dir)
    if storage.listdir():
        raise ConfigError(f"run_dir {cfg.run_dir} already exists and is not empty: choose another run_dir, or "
                          f"continue it with resume={cfg.run_dir} (finished runs are never overwritten)")
    storage.write_text("config.yaml", to_yaml(cfg))
    write_csv(storage, "folds.csv", table)
    return storage


def reopen_run_dir(cfg: Config) -> tuple[RunStorage, pd.DataFrame, Optional[str]]:
    """A resumed run: its own folds.csv is the training table (same images, same folds)."""
    storage = RunStorage(cfg.run_dir)
    table = read_csv(storage, "folds.csv")
    _, test_spec = data_specs(cfg)
    return storage, table, test_spec


def decode_table(cfg: Config, table: pd.DataFrame) -> np.ndarray:
    """The training images decoded once, (N, resize, resize, 3) uint8, for every fold (or trial) to share."""
    t0 = time.time()
    images = decode_images(table["path"].tolist(), cfg.data.resize, cfg.data.decode_threads)
    log.info("decoded %d images to %dx%d in %.1fs (%.0f MB, shared by every fold)", len(images),
             cfg.data.resize, cfg.data.resize, time.time() - t0, images.nbytes / 2**20)
    return images


def _start_run(cfg: Config) -> tuple[RunStorage, pd.DataFrame, Optional[str]]:
    """A new run: read the data, assign folds, write config.yaml and folds.csv. Returns the fold table."""
    table, test_spec = read_fold_table(cfg)
    return create_run_dir(cfg, table), table, test_spec


def _finished_folds(storage: RunStorage, n_folds: int) -> dict[int, tuple[dict, dict]]:
    """{fold: (numpy weights, info)} of the folds whose checkpoint is complete and readable."""
    done = {}
    for k in range(n_folds):
        loaded = try_load_fold_checkpoint(storage, k)
        if loaded and "history" in loaded[1]:
            weights, meta = loaded
            info = dict(meta, val_index=np.asarray(meta["val_index"]), val_prob_fake=np.asarray(meta["val_prob_fake"]))
            done[k] = ({name: t.numpy() for name, t in weights.items()}, info)
    return done


def train(cfg: Config) -> str:
    """Run (or resume) the whole K-fold training and inference; returns the run directory."""
    t_start = time.time()
    storage, table, test_spec = reopen_run_dir(cfg) if cfg.resume else _start_run(cfg)
    folds = table["fold"].to_numpy()
    test_df = read_test(test_spec, cfg.data.test_root) if test_spec else None
    finished = _finished_folds(storage, cfg.train.folds) if cfg.resume else {}
    todo = [k for k in range(cfg.train.folds) if k not in finished]
    log.info("run directory %s: %d training images in %d folds%s%s", cfg.run_dir, len(table), cfg.train.folds,
             f", {len(test_df)} test images" if test_df is not None else "",
             f"; resuming, folds {sorted(finished)} already finished" if cfg.resume else "")
    try:
        with ray_session(cfg.ray.address):
            infos, weight_refs = _train_folds(cfg, storage, table, folds, todo, finished)
            summary = _summarize(cfg, storage, table, folds, infos)
            if test_df is not None:
                summary["test"] = _predict_test(cfg, storage, test_df, weight_refs)
                if summary["test"] is None:
                    del summary["test"]
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted: running folds were cancelled; finished folds and every completed "
                             f"epoch are saved in {cfg.run_dir}. Resume with:\n  python -m raydf.train "
                             f"resume={cfg.run_dir}") from None
    summary["wall_seconds"] = time.time() - t_start
    storage.write_text("summary.json", json.dumps(summary, indent=2))
    return cfg.run_dir


def _train_folds(cfg: Config, storage: RunStorage, table: pd.DataFrame, folds: np.ndarray, todo: list[int],
                 finished: dict[int, tuple[dict, dict]]) -> tuple[list[dict], list[ray.ObjectRef]]:
    """Train the folds in `todo` in parallel; returns every fold's info and best-weights ref, in fold order."""
    infos = {k: info for k, (_, info) in finished.items()}
    refs = {k: ray.put(weights) for k, (weights, _) in finished.items()}
    if todo:
        resources = fold_resources(cfg)
        images = decode_table(cfg, table)
        images_ref, labels_ref = ray.put(images), ray.put(table["label"].to_numpy(np.int64))
        del images  # the object store holds the one copy the folds read

        def on_done(info: dict, weights_ref: ray.ObjectRef) -> None:
            meta = {k: v for k, v in info.items() if k not in ("val_index", "val_prob_fake")}
            meta.update(val_index=info["val_index"].tolist(), val_prob_fake=info["val_prob_fake"].tolist(),
                        config=to_dict(cfg))
            save_fold_checkpoint(storage, info["fold"], ray.get(weights_ref), meta)
            log.info("fold %d done: best epoch %d, val loss %.4f, val acc %.3f (%d epochs, %.0fs, attempt %d)",
                     info["fold"], info["best_epoch"], info["val_loss"], info["val_acc"], info["epochs_run"],
                     info["finished_at"] - info["started_at"], info["attempts"])

        splits = {k: (np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in todo}
        for k, (ref, info) in run_folds(images_ref, labels_ref, splits, cfg, resources, storage, on_done).items():
            infos[k], refs[k] = info, ref
    order = sorted(infos)
    return [infos[k] for k in order], [refs[k] for k in order]


def _summarize(cfg: Config, storage: RunStorage, table: pd.DataFrame, folds: np.ndarray,
               infos: list[dict]) -> dict:
    """oof.csv, history.csv and the fold and CV part of summary.json."""
    prob = np.full(len(table), np.nan)
    for info in infos:
        prob[info["val_index"]] = info["val_prob_fake"]
    oof = pd.DataFrame({"path": table["path"], "label": table["label"], "fold": folds, "prob_fake": prob})
    write_csv(storage, "oof.csv", oof)
    write_csv(storage, "history.csv", pd.DataFrame([row for info in infos for row in info["history"]]))
    return {"folds": [{k: info[k] for k in SUMMARY_FOLD_KEYS} for info in infos],
            "cv": classification_metrics(oof["label"], oof["prob_fake"])}


def _predict_test(cfg: Config, storage: RunStorage, test_df: pd.DataFrame,
                  weight_refs: list[ray.ObjectRef]) -> Optional[dict]:
    """submission.csv by the distributed soft vote (kept as it is when a resumed run already has it)."""
    if cfg.resume and storage.exists("submission.csv"):
        log.info("submission.csv exists: not predicted again")
        prob_fake = read_csv(storage, "submission.csv")["prob_fake"]
    else:
        t0 = time.time()
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.resources.gpus_per_fold != 0 else 0.0
        pred = soft_vote_predict(test_df["path"].tolist(), weight_refs, resize=cfg.data.resize, crop=cfg.data.crop,
                                 dropout=cfg.model.dropout, batch_size=cfg.predict.batch_size,
                                 actors=cfg.predict.actors, gpus_per_actor=gpus, precision=cfg.train.precision)
        write_submission(storage, "submission.csv", test_df, pred)
        log.info("soft vote over %d test images in %.1fs", len(test_df), time.time() - t0)
        prob_fake = pred["prob_fake"]
    if "label" not in test_df.columns:
        return None
    return classification_metrics(test_df["label"], prob_fake)


def write_submission(storage: RunStorage, rel: str, test_df: pd.DataFrame, pred: pd.DataFrame) -> pd.DataFrame:
    """`image,label,prob_fake` in the test table's row order (label: argmax of the soft vote, 1 = fake)."""
    sub = pd.DataFrame({"image": test_df["image"].to_numpy(), "label": (pred["prob_fake"] > 0.5).astype(int),
                        "prob_fake": pred["prob_fake"].to_numpy()})
    write_csv(storage, rel, sub)
    return sub
