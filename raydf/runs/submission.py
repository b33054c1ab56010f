"""The submission table: one row per test image, in the test table's order, unreadable images included."""

from __future__ import annotations

from typing import Collection

import numpy as np
import pandas as pd

from raydf.runs.storage import RunStorage

FLAG_BAD = "bad_input"  # `flag` of a test image that could not be read (its prob_fake is the prior)


def build_submission(
    test: pd.DataFrame,
    prob_fake: np.ndarray,
    bad_rows: Collection[int] = (),
    prior: float = 0.5,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """`image,label,prob_fake` (label: 1 = fake, prob_fake > threshold: predict.threshold's cut, chosen on the
    out-of-fold data), plus `flag` only when some image is bad.

    Args:
        test: the test table (`image` column), in submission order.
        prob_fake: P(fake) of the readable rows, in order (len(test) - len(bad_rows) values).
        bad_rows: test rows that could not be read; they are never dropped, they get `prior` and a flag.
        prior: the fraction of fakes in the training set: the best guess without the image.
        threshold: label = prob_fake > threshold.
    """
    usable = np.ones(len(test), dtype=bool)
    usable[list(bad_rows)] = False
    prob = np.full(len(test), float(prior))
    prob[usable] = np.asarray(prob_fake, dtype=np.float64)
    sub = pd.DataFrame({"image": test["image"].to_numpy(), "label": (prob > threshold).astype(int), "prob_fake": prob})
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
    threshold: float = 0.5,
) -> pd.DataFrame:
    """`image,label,prob_fake` in the test table's row order (label: prob_fake > threshold, 1 = fake).

    `pred` holds the readable rows only; `bad_rows` get `prior` and `flag=bad_input` (`raydf.runs.submission`).
    """
    sub = build_submission(test_df, pred["prob_fake"].to_numpy(), bad_rows, prior, threshold)
    storage.write_text(rel, sub.to_csv(index=False))
    return sub


FLAG_NO_FACE = "no_face"  # `flag` of a video/photo in which no usable face was found (its prob_fake is the prior)
AGGREGATIONS = ("mean", "median", "confident")


def confident_mean(prob: np.ndarray, threshold: float = 0.8) -> float:
    """The DFDC winner's per-video rule (selimsef, `confident_strategy`), as published for 32 frames: when more
    than 11 frames, and more than 40% of them, are confidently fake, the mean of those; when over 90% are
    confidently real (< 0.2), the mean of those; else the plain mean."""
    prob = np.asarray(prob, dtype=np.float64)
    fakes = int(np.count_nonzero(prob > threshold))
    if fakes > len(prob) // 2.5 and fakes > 11:
        return float(prob[prob > threshold].mean())
    if np.count_nonzero(prob < 0.2) > 0.9 * len(prob):
        return float(prob[prob < 0.2].mean())
    return float(prob.mean())


def _confident_means(source: pd.Series, prob: pd.Series, threshold: float = 0.8) -> pd.Series:
    """`confident_mean` of every source's P(fake) at once (indexed by source, first appearance order)."""
    hi, lo = prob > threshold, prob < 0.2
    by = source.to_numpy()
    frame = pd.DataFrame(
        {"n": 1, "fakes": hi, "fake_sum": prob.where(hi, 0.0), "reals": lo, "real_sum": prob.where(lo, 0.0)}
    )
    sums = frame.groupby(by, sort=False).sum()
    mean = prob.groupby(by, sort=False).mean(skipna=False)
    confident_fake = (sums["fakes"] > sums["n"] // 2.5) & (sums["fakes"] > 11)
    confident_real = sums["reals"] > 0.9 * sums["n"]
    out = np.where(
        confident_fake,
        sums["fake_sum"] / sums["fakes"].where(confident_fake, 1),
        np.where(confident_real, sums["real_sum"] / sums["reals"].where(confident_real, 1), mean),
    )
    return pd.Series(out, index=sums.index)


def aggregate_sources(
    faces: pd.DataFrame, no_faces: pd.DataFrame, how: str = "mean", prior: float = 0.5, threshold: float = 0.5
) -> pd.DataFrame:
    """One row per video/photo from per-face rows: `image,label,prob_fake,n_faces` (+ `flag` when needed).

    Args:
        faces: per-face predictions, columns `source`, `prob_fake` and optionally `flag` (unreadable crops,
            left out of their source's vote).
        no_faces: the sources with no face (`source` column): they get `prior` and `flag=no_face`.
        how: mean | median | confident (`confident_mean`).
        threshold: label = prob_fake > threshold.
    """
    usable = faces if "flag" not in faces else faces[faces["flag"] == ""]
    if how not in AGGREGATIONS:
        raise KeyError(how)
    order = list(dict.fromkeys(faces["source"]))  # first appearance: the manifest's source order
    grouped = usable.groupby("source", sort=False)["prob_fake"]
    # Whole-column group reductions, not one Python call per source (a million photos are a million sources).
    if how == "confident":
        prob = _confident_means(usable["source"], usable["prob_fake"]).reindex(order)
    else:
        prob = getattr(grouped, how)(skipna=False).reindex(order)
    n_faces = grouped.size().reindex(order).fillna(0).astype(int)
    sub = pd.DataFrame({"image": order, "prob_fake": prob.to_numpy(), "n_faces": n_faces.to_numpy()})
    flag = np.where(sub["prob_fake"].isna(), FLAG_BAD, "")  # every crop of the source unreadable
    sub["prob_fake"] = sub["prob_fake"].fillna(prior)
    missing = pd.DataFrame({"image": no_faces["source"].astype(str), "prob_fake": prior, "n_faces": 0})
    sub = pd.concat([sub, missing], ignore_index=True)
    flag = np.concatenate([flag, np.full(len(missing), FLAG_NO_FACE)])
    sub.insert(1, "label", (sub["prob_fake"] > threshold).astype(int))
    if (flag != "").any():
        sub["flag"] = flag
    return sub


def build_face_submissions(
    test: pd.DataFrame,
    prob_fake: np.ndarray,
    bad_rows: Collection[int],
    prior: float,
    manifest: pd.DataFrame,
    no_faces: pd.DataFrame,
    how: str,
    threshold: float = 0.5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-face rows (`build_submission` plus `source`, `frame`, `face`) and their per-video/photo aggregate.

    `test` is the test table read from a faces manifest and `manifest` that manifest, row for row.
    """
    faces = build_submission(test, prob_fake, bad_rows, prior, threshold)
    for col in ("source", "frame", "face"):
        faces[col] = manifest[col].to_numpy()
    if "flag" not in faces:
        faces["flag"] = ""
    sources = aggregate_sources(faces, no_faces, how, prior, threshold)
    if not (faces["flag"] != "").any():
        faces = faces.drop(columns="flag")
    return faces, sources


def source_labels(manifest: pd.DataFrame, no_faces: pd.DataFrame) -> pd.Series:
    """The label of every video/photo (faces.csv and no_faces.csv), indexed by source; NaN where unknown."""
    labels = pd.concat([manifest.groupby("source", sort=False)["label"].first(), no_faces.set_index("source")["label"]])
    return pd.to_numeric(labels[~labels.index.duplicated()], errors="coerce")
