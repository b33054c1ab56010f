"""Metrics and the soft vote (plain numpy / scikit-learn)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve


def soft_vote(fold_probs: np.ndarray) -> np.ndarray:
    """Mean over folds of each fold's softmax: (K, N, 2) -> (N, 2). The seed summed them (same argmax)."""
    return np.asarray(fold_probs, dtype=np.float64).mean(axis=0)


def classification_metrics(labels: np.ndarray, prob_fake: np.ndarray) -> dict[str, Optional[float]]:
    """Accuracy at 0.5, ROC AUC, log loss, average precision (fake = positive) and equal error rate of P(fake).

    AUC, AP and EER need both classes (None otherwise). EER: the error rate where the false-positive and
    false-negative rates are equal, interpolated on the ROC curve (the field reports it beside AUC).
    """
    labels = np.asarray(labels).astype(int)
    prob_fake = np.clip(np.asarray(prob_fake, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = len(np.unique(labels)) == 2
    return {
        "accuracy": float(((prob_fake > 0.5).astype(int) == labels).mean()),
        "auc": float(roc_auc_score(labels, prob_fake)) if both else None,
        "log_loss": float(log_loss(labels, prob_fake, labels=[0, 1])),
        "ap": float(average_precision_score(labels, prob_fake)) if both else None,
        "eer": equal_error_rate(labels, prob_fake) if both else None,
    }


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
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
    left out of that resample's distribution.
    """
    labels, prob_fake = np.asarray(labels).astype(int), np.asarray(prob_fake, dtype=np.float64)
    point = classification_metrics(labels, prob_fake)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        for k, v in classification_metrics(labels[idx], prob_fake[idx]).items():
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
