"""The run directory's first files, shared by the commands that create or reopen one (training, sweeps).

A new run: every input checked (the pre-flight), folds assigned, then `config.yaml`, `folds.csv`,
`bad_inputs.csv` and `duplicates.csv` written together. A reopened run: its own `folds.csv` is the table.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Optional

import numpy as np
import pandas as pd

from raydf.config import Config, to_yaml
from raydf.data.catalog import read_test, read_train
from raydf.data.demo import default_cache_dir, ensure_demo
from raydf.data.face_store import lists_landmarks, manifest_landmarks
from raydf.data.folds import assign_folds, check_splittable
from raydf.data.preflight import Check, CheckedInputs, preflight
from raydf.data.self_blend import mask_landmarks, no_landmarks
from raydf.errors import ConfigError, DataError
from raydf.runs.storage import RunStorage

log = logging.getLogger(__name__)


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
            raise DataError(
                f"fold {k} has {n_train} training images, fewer than train.batch_size={batch_size}: "
                f"lower train.batch_size or train.folds, or add images"
            )


def read_tables(cfg: Config, with_test: bool = True) -> tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """The training and test tables as read, checked as tables (no image read yet)."""
    train_spec, test_spec = data_specs(cfg)
    if cfg.data.synthetic_fakes != "off" and cfg.synth.mask == "landmarks" and not lists_landmarks(train_spec):
        raise no_landmarks()  # before the pre-flight decodes the set
    table = read_train(train_spec, cfg.data.train_root, cfg.train.group_by)
    test_df = read_test(test_spec, cfg.data.test_root) if test_spec and with_test else None
    check_splittable(table, cfg.train.folds, cfg.train.split)  # table errors first: they cost no decoding
    return table, test_df


def table_landmarks(cfg: Config, table: pd.DataFrame) -> Optional[np.ndarray]:
    """The fold table's face landmarks (N, 5, 2) float32 in the decoded images' pixels (NaN: none), which the
    self-blended fakes' masks follow (`synth.mask`); None when no mask follows landmarks (no synthetic fakes,
    synth.mask=ellipse, or a training set that is not a faces manifest with landmarks, under auto)."""
    if cfg.data.synthetic_fakes == "off" or cfg.synth.mask == "ellipse":
        return None
    landmarks = manifest_landmarks(data_specs(cfg)[0], table["path"].tolist(), cfg.data.resize)
    landmarks = mask_landmarks(cfg.synth.mask, landmarks)
    if landmarks is not None:
        reals = table["label"].to_numpy() == 0
        known = int(np.isfinite(landmarks[reals]).all(axis=(1, 2)).sum())
        log.info(
            "self-blended fakes: masks around the face landmarks of %d of %d real images%s",
            known,
            int(reals.sum()),
            "" if known == reals.sum() else " (an ellipse for the others)",
        )
    return landmarks


def cache_folder(cfg: Config) -> Optional[str]:
    """Where the decoded, encoded and pre-flight caches live; None with data.cache=off."""
    return None if cfg.data.cache == "off" else str(cfg.data.cache_dir or default_cache_dir() / "decoded")


def checked_table(
    cfg: Config,
    with_test: bool = True,
    *,
    tables: Optional[tuple[pd.DataFrame, Optional[pd.DataFrame]]] = None,
    decode: bool = True,
    disk: bool = False,
    check: Optional[Check] = None,
) -> tuple[pd.DataFrame, Optional[pd.DataFrame], CheckedInputs]:
    """Every input checked (tables, then each image: the pre-flight) and folds assigned to the usable images.

    Returns the fold table (the usable training rows with a `fold` column), the test table, and the pre-flight's
    result (its decoded training images when `decode`, the unreadable rows, the duplicates). `tables`: what
    `read_tables` gave, when the caller read them already; `disk`: decode into a memory-mapped scratch file, not
    memory (data.cache=disk); `check`: see `raydf.data.preflight.preflight`.
    """
    table, test_df = tables or read_tables(cfg, with_test)
    inputs = preflight(
        table,
        test_df,
        cfg.data.resize,
        cfg.data.decode_threads,
        cfg.data.on_bad,
        decode=decode,
        check=check,
        cache_folder=cache_folder(cfg),
        decode_to_disk=decode and disk,
    )
    table = inputs.train.assign(
        fold=assign_folds(inputs.train, cfg.train.folds, cfg.train.seed, cfg.train.split, content=inputs.content)
    )
    _check_fold_sizes(table["fold"].to_numpy(), cfg.train.batch_size)
    return table, test_df, inputs


def create_run_dir(
    cfg: Config, table: pd.DataFrame, default: str = "runs/%Y%m%d-%H%M%S", inputs: Optional[CheckedInputs] = None
) -> RunStorage:
    """A new run directory (`run_dir`, else `default` with the time filled in) with config.yaml, folds.csv and,
    given the pre-flight's `inputs`, bad_inputs.csv and duplicates.csv. Refuses a non-empty one."""
    storage = empty_run_dir(cfg, default)
    files = {"config.yaml": to_yaml(cfg), "folds.csv": table.to_csv(index=False)}
    if inputs is not None:  # written even when empty: "checked, none found"
        files.update(
            {"bad_inputs.csv": inputs.bad.to_csv(index=False), "duplicates.csv": inputs.duplicates.to_csv(index=False)}
        )
    try:
        for rel, text in files.items():
            storage.write_text(rel, text)
    except BaseException:  # interrupted: no run directory that can neither be resumed nor reused
        for rel in files:
            storage.delete(rel)
        raise
    return storage


def empty_run_dir(cfg: Config, default: str) -> RunStorage:
    cfg.run_dir = cfg.run_dir or time.strftime(default)
    storage = RunStorage(cfg.run_dir)
    if storage.listdir():
        raise ConfigError(
            f"run_dir {cfg.run_dir} already exists and is not empty: choose another run_dir, or "
            f"continue it with resume={cfg.run_dir} (finished runs are never overwritten)"
        )
    return storage


def read_fold_table(
    cfg: Config,
    tables: tuple[pd.DataFrame, Optional[pd.DataFrame]],
    *,
    decode: bool = True,
    check: Optional[Check] = None,
) -> tuple[pd.DataFrame, Optional[np.ndarray]]:
    """The checked fold table of a sweep (`tables` as `read_tables` gave them, without a test set) and, when
    `decode`, its training images as the pre-flight decoded them (None when found in the pre-flight's cache)."""
    table, _, inputs = checked_table(cfg, with_test=False, tables=tables, decode=decode, check=check)
    return table, inputs.images


def reopen_run_dir(cfg: Config) -> tuple[RunStorage, pd.DataFrame, Optional[str]]:
    """A resumed run: its own folds.csv is the training table (same images, same folds)."""
    storage = RunStorage(cfg.run_dir)
    return storage, read_csv(storage, "folds.csv"), data_specs(cfg)[1]
