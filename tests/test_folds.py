"""Fold assignment: the seed's KFold by default; groups and byte-identical files never straddle folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from raydf.data.folds import assign_folds, check_splittable
from raydf.errors import DataError


def _table(n: int, groups=None) -> pd.DataFrame:
    df = pd.DataFrame({"path": [f"/d/{i}.jpg" for i in range(n)], "label": np.arange(n) % 2})
    if groups is not None:
        df["group"] = [str(g) for g in groups]
    return df


def _seed_kfold(n: int, k: int, seed: int) -> np.ndarray:
    fold = np.empty(n, dtype=int)
    for j, (_, val) in enumerate(KFold(k, shuffle=True, random_state=seed).split(np.zeros(n))):
        fold[val] = j
    return fold


def _straddling(fold: np.ndarray, keys) -> list:
    """Keys whose rows sit in more than one fold."""
    return [k for k in set(keys) if len({f for f, key in zip(fold, keys) if key == k}) > 1]


def test_default_is_the_seeds_kfold_and_distinct_files_change_nothing():
    table = _table(40)
    expected = _seed_kfold(40, 4, 42)
    np.testing.assert_array_equal(assign_folds(table, 4, 42), expected)
    np.testing.assert_array_equal(assign_folds(table, 4, 42, content=[f"h{i}" for i in range(40)]), expected)


def test_identical_files_share_the_fold_of_their_first_copy_and_nothing_else_moves():
    content = [f"h{i}" for i in range(40)]
    content[7] = content[30] = content[2]  # three copies of one file
    content[11] = content[5]
    fold = assign_folds(_table(40), 4, 42, content=content)
    expected = _seed_kfold(40, 4, 42)
    assert fold[7] == fold[30] == fold[2] == expected[2] and fold[11] == fold[5] == expected[5]
    moved = set(np.flatnonzero(fold != expected))
    assert moved <= {7, 30, 11}


@pytest.mark.parametrize("split", ["kfold", "stratified", "group"])
def test_a_group_column_groups_the_folds_in_every_split_mode(split):
    groups = np.repeat(np.arange(12), 5)  # 12 sources of 5 images each
    fold = assign_folds(_table(60, groups), 3, 0, split)
    assert _straddling(fold, groups.tolist()) == [] and sorted(set(fold)) == [0, 1, 2]


def test_groups_sharing_an_identical_file_are_merged():
    groups = np.repeat(np.arange(10), 4)
    content = [f"h{i}" for i in range(40)]
    content[39] = content[0]  # the same file in source 0 and source 9
    fold = assign_folds(_table(40, groups), 5, 1, content=content)
    assert fold[0] == fold[39]
    assert _straddling(fold, groups.tolist()) == []  # so sources 0 and 9 sit together, whole


@pytest.mark.parametrize(
    "table, folds, split, message",
    [
        (_table(3), 4, "kfold", "has 3 images, fewer than train.folds=4"),
        (
            _table(20).assign(label=[1] * 17 + [0] * 3),
            4,
            "stratified",
            "at least train.folds=4 images of each class; found 3 real and 17 fake",
        ),
        (_table(20), 2, "group", "train.split=group needs a `group` column"),
        (_table(20, [0] * 10 + [1] * 10), 3, "kfold", "at least train.folds=3 groups; found 2"),
    ],
)
def test_unsplittable_tables_fail_before_any_work(table, folds, split, message):
    with pytest.raises(DataError, match=message):
        check_splittable(table, folds, split)
    with pytest.raises(DataError, match=message):
        assign_folds(table, folds, 0, split)


def test_too_few_groups_once_identical_files_merge_them():
    content = [f"h{i}" for i in range(9)]
    content[8] = content[0]  # ties group 0 to group 2
    with pytest.raises(DataError, match="found 2 once groups sharing identical files are merged"):
        assign_folds(_table(9, [0, 0, 0, 1, 1, 1, 2, 2, 2]), 3, 0, content=content)


def test_too_few_distinct_files_for_the_folds():
    with pytest.raises(DataError, match="too few distinct images for train.folds=3"):
        assign_folds(_table(4), 3, 0, content=["same"] * 4)
