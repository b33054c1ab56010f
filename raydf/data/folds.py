"""Fold assignment: the seed's shuffled KFold, or stratified / grouped; saved as folds.csv.

Leakage: rows of one group (the `group` column, or `train.group_by`) always share a fold, whatever
`train.split` says, and so do byte-identical files (`content`): a copy of a validation image in the
training part would make the validation scores optimistic.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from raydf.errors import DataError


def check_splittable(table: pd.DataFrame, n_splits: int, split: str) -> None:
    """Fail, before any work, when `table` cannot be cut into `n_splits` folds the way `split` asks."""
    n = len(table)
    if n < n_splits:
        raise DataError(
            f"the training set has {n} images, fewer than train.folds={n_splits}: add images or lower train.folds"
        )
    if split == "stratified":
        n_fake = int((table["label"] == 1).sum())
        if min(n_fake, n - n_fake) < n_splits:
            raise DataError(
                f"train.split=stratified needs at least train.folds={n_splits} images of each class; "
                f"found {n - n_fake} real and {n_fake} fake: lower train.folds or use train.split=kfold"
            )
    if split == "group" and "group" not in table.columns:
        raise DataError(
            "train.split=group needs a `group` column in the training CSV (the source each image "
            "comes from), or train.group_by naming such a column; add one or use train.split=kfold"
        )
    if "group" in table.columns:
        _check_groups(table["group"].nunique(), n_splits, "")


def _check_groups(n_groups: int, n_splits: int, after: str) -> None:
    if n_groups < n_splits:
        raise DataError(
            f"grouped folds need at least train.folds={n_splits} groups; found {n_groups}{after}: "
            "lower train.folds, or give the images finer groups"
        )


def assign_folds(
    table: pd.DataFrame, n_splits: int, seed: int, split: str = "kfold", content: Optional[Sequence[str]] = None
) -> np.ndarray:
    """Fold id (0..n_splits-1) of every row of `table` (columns `label`, optional `group`).

    Args:
        split: `kfold`, `stratified` or `group`; a `group` column groups the folds in every mode
            (GroupKFold, or StratifiedGroupKFold under `stratified`).
        content: a content hash per row (e.g. SHA-256 of the file): rows with equal hashes land in one
            fold. Without groups the seed's KFold assignment is kept and only the copies move to the
            fold of their first occurrence; with groups, groups sharing a file are merged.
    """
    check_splittable(table, n_splits, split)
    n = len(table)
    labels = table["label"].to_numpy()
    if "group" in table.columns:
        groups = table["group"].to_numpy() if content is None else _merge_groups(table["group"], content)
        _check_groups(len(np.unique(groups)), n_splits, " once groups sharing identical files are merged")
        kind = StratifiedGroupKFold if split == "stratified" else GroupKFold
        splitter, args = kind(n_splits, shuffle=True, random_state=seed), (labels, groups)
    elif split == "stratified":
        splitter, args = StratifiedKFold(n_splits, shuffle=True, random_state=seed), (labels,)
    else:
        splitter, args = KFold(n_splits, shuffle=True, random_state=seed), ()
    fold = np.full(n, -1, dtype=np.int64)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(n), *args)):
        fold[val_idx] = k
    if "group" not in table.columns and content is not None:
        fold = _keep_copies_together(fold, content)
    empty = sorted(set(range(n_splits)) - set(fold.tolist()))
    if empty:
        raise DataError(
            f"fold {empty[0]} has no images once identical files are kept in one fold: the training "
            f"set has too few distinct images for train.folds={n_splits}; lower train.folds"
        )
    return fold


def _keep_copies_together(fold: np.ndarray, content: Sequence[str]) -> np.ndarray:
    """Move every copy of a file to the fold of its first occurrence."""
    codes, uniques = pd.factorize(pd.Series(content, dtype=object), use_na_sentinel=False)
    first = np.full(len(uniques), len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))  # each file's first row
    return fold[first[codes]]


def _merge_groups(groups: pd.Series, content: Sequence[str]) -> np.ndarray:
    """Group ids where two groups holding a byte-identical file become one (union-find over group ids)."""
    codes, _ = pd.factorize(groups)
    parent = list(range(codes.max() + 1))

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    # Only files listed in two rows or more can join groups, and a (group, file) pair seen before joins nothing
    # new: the loop runs over those pairs alone, in row order, and so merges exactly as one over every row would.
    pairs = pd.DataFrame({"group": codes, "key": pd.Series(content, dtype=object).to_numpy()})
    pairs = pairs[pairs["key"].duplicated(keep=False)].drop_duplicates()
    owner: dict[str, int] = {}
    for g, key in zip(pairs["group"].tolist(), pairs["key"].tolist()):
        parent[root(g)] = root(owner.setdefault(key, g))
    return np.array([root(g) for g in range(len(parent))])[codes]
