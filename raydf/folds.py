"""Fold assignment: the seed's shuffled KFold, or stratified / grouped; saved as folds.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

from raydf.errors import DataError


def assign_folds(table: pd.DataFrame, n_splits: int, seed: int, split: str = "kfold") -> np.ndarray:
    """Fold id (0..n_splits-1) of every row of `table` (columns `label`, optional `group`)."""
    n = len(table)
    if n < n_splits:
        raise DataError(f"the training set has {n} images, fewer than train.folds={n_splits}: "
                        f"add images or lower train.folds")
    if split == "kfold":
        splitter, args = KFold(n_splits, shuffle=True, random_state=seed), ()
    elif split == "stratified":
        counts = table["label"].value_counts()
        if counts.min() < n_splits:
            raise DataError(f"train.split=stratified needs at least train.folds={n_splits} images of each class; "
                            f"found {dict(counts)} (label 1 = fake): lower train.folds or use train.split=kfold")
        splitter, args = StratifiedKFold(n_splits, shuffle=True, random_state=seed), (table["label"],)
    elif split == "group":
        if "group" not in table.columns:
            raise DataError("train.split=group needs a `group` column in the training CSV "
                            "(the source each image comes from); add one or use train.split=kfold")
        n_groups = table["group"].nunique()
        if n_groups < n_splits:
            raise DataError(f"train.split=group needs at least train.folds={n_splits} groups; found {n_groups}")
        splitter, args = GroupKFold(n_splits, shuffle=True, random_state=seed), (table["label"], table["group"])
    else:
        raise ValueError(split)  # validated in config
    fold = np.full(n, -1, dtype=np.int64)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(n), *args)):
        fold[val_idx] = k
    return fold
