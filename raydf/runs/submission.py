"""The submission table: one row per test image, in the test table's order, unreadable images included."""

from __future__ import annotations

from typing import Collection

import numpy as np
import pandas as pd

from raydf.runs.storage import RunStorage

FLAG_BAD = "bad_input"  # `flag` of a test image that could not be read (its prob_fake is the prior)


def build_submission(
    test: pd.DataFrame, prob_fake: np.ndarray, bad_rows: Collection[int] = (), prior: float = 0.5
) -> pd.DataFrame:
    """`image,label,prob_fake` (label: 1 = fake, prob_fake > 0.5), plus `flag` only when some image is bad.

    Args:
        test: the test table (`image` column), in submission order.
        prob_fake: P(fake) of the readable rows, in order (len(test) - len(bad_rows) values).
        bad_rows: test rows that could not be read; they are never dropped, they get `prior` and a flag.
        prior: the fraction of fakes in the training set: the best guess without the image.
    """
    usable = np.ones(len(test), dtype=bool)
    usable[list(bad_rows)] = False
    prob = np.full(len(test), float(prior))
    prob[usable] = np.asarray(prob_fake, dtype=np.float64)
    sub = pd.DataFrame({"image": test["image"].to_numpy(), "label": (prob > 0.5).astype(int), "prob_fake": prob})
    if not usable.all():  # the contract columns stay first and unchanged; a clean run has no extra column
        sub["flag"] = np.where(usable, "", FLAG_BAD)
    return sub


def write_submission(
    storage: RunStorage,
    rel: str,
    test_df: pd.DataFrame,
    pred: pd.DataFrame,
    bad_rows: Collection[int] = (),
    prior: float = 0.5,
) -> pd.DataFrame:
    """`image,label,prob_fake` in the test table's row order (label: argmax of the soft vote, 1 = fake).

    `pred` holds the readable rows only; `bad_rows` get `prior` and `flag=bad_input` (`raydf.runs.submission`).
    """
    sub = build_submission(test_df, pred["prob_fake"].to_numpy(), bad_rows, prior)
    storage.write_text(rel, sub.to_csv(index=False))
    return sub
