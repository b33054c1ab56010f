"""Metrics and the soft vote (plain numpy / scikit-learn)."""

from __future__ import annotations

from typing import Optional

import numpy as np

# scikit-learn is imported where it is used: the soft vote's actors and Serve's replicas import this module to apply
# a calibration and never score, and sklearn's import costs them ~0.4 s each.


def soft_vote(fold_probs: np.ndarray) -> np.ndarray:
    """Mean over folds of each fold's softmax: (K, N, 2) -> (N, 2). The seed summed them (same argmax)."""
    return np.asarray(fold_probs, dtype=np.float64).mean(axis=0)


def classification_metrics(labels: np.ndarray, prob_fake: np.ndarray) -> dict[str, Optional[float]]:
    """Accuracy at 0.5, ROC AUC, log loss, average precision (fake = positive), equal error rate, expected
    calibration error and Brier score of P(fake).

    AUC, AP and EER need both classes (None otherwise). EER: the error rate where the false-positive and
    false-negative rates are equal, interpolated on the ROC curve (the field reports it beside AUC). ECE: see
    `expected_calibration_error`; Brier: the mean squared difference between P(fake) and the label.
    """
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    labels = np.asarray(labels).astype(int)
    prob_fake = np.clip(np.asarray(prob_fake, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = len(np.unique(labels)) == 2
    return {
        "accuracy": float(((prob_fake > 0.5).astype(int) == labels).mean()),
        "auc": float(roc_auc_score(labels, prob_fake)) if both else None,
        "log_loss": float(log_loss(labels, prob_fake, labels=[0, 1])),
        "ap": float(average_precision_score(labels, prob_fake)) if both else None,
        "eer": equal_error_rate(labels, prob_fake) if both else None,
        "ece": expected_calibration_error(labels, prob_fake),
        "brier": float(np.mean((prob_fake - labels) ** 2)),
    }


ECE_BINS = 15


def ece_bins(prob_fake: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The bin of each P(fake) among `bins` equal-width bins of [0, 1] (1.0 falls in the last)."""
    return np.minimum((np.asarray(prob_fake, dtype=np.float64) * bins).astype(int), bins - 1)


def expected_calibration_error(labels: np.ndarray, prob_fake: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of P(fake): the rows are put in `bins` equal-width bins of P(fake); the mean over rows of |fraction of
    fakes in the row's bin - mean P(fake) in its bin| (Naeini et al. 2015, on the probability a user reads, P(fake),
    rather than on max(P, 1 - P)). 0 = what the model says is what happens."""
    labels, prob_fake = np.asarray(labels, dtype=np.float64), np.asarray(prob_fake, dtype=np.float64)
    b = ece_bins(prob_fake, bins)
    gap = np.bincount(b, labels, bins) - np.bincount(b, prob_fake, bins)
    return float(np.abs(gap).sum() / len(labels))


def log_loss_of(labels: np.ndarray, prob_fake: np.ndarray) -> float:
    """Binary log loss of P(fake), clipped to [1e-7, 1 - 1e-7] as `classification_metrics` scores it (numpy: the
    calibration fit calls it many times)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(prob_fake, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return _eer_on_curve(fpr, tpr)


def _eer_on_curve(fpr: np.ndarray, tpr: np.ndarray) -> float:
    fnr = 1 - tpr
    i = int(np.nonzero(fnr <= fpr)[0][0])  # the first threshold where the two curves cross
    if i == 0:
        return float(fpr[0])
    # Linear interpolation between the points either side of the crossing.
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def bootstrap_metrics(
    labels: np.ndarray, prob_fake: np.ndarray, n: int = 1000, seed: int = 0
) -> dict[str, dict[str, Optional[float] | list[Optional[float]]]]:
    """`classification_metrics` with 95% bootstrap confidence intervals: {metric: {"value", "ci95": [lo, hi]}}.

    Rows are resampled with replacement `n` times (seeded); a metric undefined in a resample (one class only) is
    left out of that resample's distribution. A resample is scored as `classification_metrics` would score it
    (equal to rounding), but from how often it draws each row (`_Resampled`): the rows are sorted once, not
    once per resample, so 1,000 resamples of a million rows take seconds, not hours.
    """
    labels, prob_fake = np.asarray(labels).astype(int), np.asarray(prob_fake, dtype=np.float64)
    point = classification_metrics(labels, prob_fake)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    scorer = _Resampled(labels, prob_fake)
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        for k, v in scorer.metrics(idx).items():
            if v is not None:
                draws[k].append(v)
    return {
        k: {
            "value": point[k],
            "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]
            if d and point[k] is not None
            else None,
        }
        for k, d in draws.items()
    }


class _Resampled:
    """`classification_metrics` of resamples `labels[idx], prob_fake[idx]`, computed from the draw counts.

    The rows are sorted by P(fake) once; a resample is then a count per row (`np.bincount`), and the ROC and
    precision-recall curves are cumulative sums of those counts over the runs of equal scores, as scikit-learn
    builds them. The ROC is kept at every distinct score (scikit-learn drops collinear points, which changes
    neither the area nor where the curve crosses the EER line), so the values agree up to rounding.
    """

    def __init__(self, labels: np.ndarray, prob_fake: np.ndarray) -> None:
        p = np.clip(prob_fake, 1e-7, 1 - 1e-7)  # as classification_metrics: clipping can make ties
        order = np.argsort(-p, kind="mergesort")  # highest P(fake) first
        self.n = len(p)
        self.rank = np.empty(self.n, dtype=np.int64)
        self.rank[order] = np.arange(self.n)
        y, p = labels[order], p[order]
        self.y = y.astype(np.float64)
        self.correct = ((p > 0.5).astype(int) == y).astype(np.float64)
        self.loss = -np.where(y == 1, np.log(p), np.log1p(-p))
        self.sq = (p - y) ** 2  # Brier
        self.bin, self.p = ece_bins(p), p
        last = np.r_[np.flatnonzero(np.diff(p)), self.n - 1]  # last row of each run of equal scores
        self.last = last if len(last) < self.n else None  # None: every score distinct

    def metrics(self, idx: np.ndarray) -> dict[str, Optional[float]]:
        # How often each (sorted) row was drawn; float64 counts are exact below 2**53.
        w = np.bincount(self.rank[idx], minlength=self.n).astype(np.float64)
        out: dict[str, Optional[float]] = {
            "accuracy": float(_dot(w, self.correct) / self.n),
            "auc": None,
            "log_loss": float(_dot(w, self.loss) / self.n),
            "ap": None,
            "eer": None,
            "brier": float(_dot(w, self.sq) / self.n),
            "ece": float(
                np.abs(np.bincount(self.bin, w * self.y, ECE_BINS) - np.bincount(self.bin, w * self.p, ECE_BINS)).sum()
                / self.n
            ),
        }
        hits = w * self.y  # fakes drawn, per row
        tps, drawn = np.cumsum(hits), np.cumsum(w)  # fakes and rows at or above each score
        if self.last is None:  # every score distinct: a row is a point of the curves
            new_tp, new_fp = hits, w - hits
        else:  # a run of equal scores is one point
            tps, drawn = tps[self.last], drawn[self.last]
            new_tp, new_fp = np.diff(tps, prepend=0.0), np.diff(drawn - tps, prepend=0.0)
        fps = drawn - tps
        pos, neg = tps[-1], fps[-1]
        if pos == 0 or neg == 0:
            return out
        # ROC AUC: trapezoids under (fps, tps); AP: precision at each new true positive, weighted by it.
        out["auc"] = float(_dot(new_fp, 2 * tps - new_tp) / (2 * pos * neg))
        precision = np.divide(tps, drawn, out=np.zeros(len(tps)), where=drawn > 0)
        out["ap"] = float(_dot(new_tp, precision) / pos)
        fpr, tpr = fps / neg, tps / pos
        i = int(np.argmax(1 - tpr <= fpr))  # the first point past the EER line (the last point, (1, 1), is)
        before = (0.0, 0.0) if i == 0 else (fpr[i - 1], tpr[i - 1])  # the curve starts at (0, 0)
        out["eer"] = _eer_on_curve(np.array([before[0], fpr[i]]), np.array([before[1], tpr[i]]))
        return out


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of a * b (einsum: several times faster than np.dot's BLAS call on a busy machine)."""
    return float(np.einsum("i,i->", a, b))
