"""Metrics and the soft vote (plain numpy / scikit-learn)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def soft_vote(fold_probs: np.ndarray) -> np.ndarray:
    """Mean over folds of each fold's softmax: (K, N, 2) -> (N, 2). The seed summed them (same argmax)."""
    return np.asarray(fold_probs, dtype=np.float64).mean(axis=0)


def classification_metrics(labels: np.ndarray, prob_fake: np.ndarray) -> dict[str, Optional[float]]:
    """Accuracy at 0.5, ROC AUC (None when only one class is present) and log loss of P(fake)."""
    labels = np.asarray(labels).astype(int)
    prob_fake = np.clip(np.asarray(prob_fake, dtype=np.float64), 1e-7, 1 - 1e-7)
    auc = float(roc_auc_score(labels, prob_fake)) if len(np.unique(labels)) == 2 else None
    return {
        "accuracy": float(((prob_fake > 0.5).astype(int) == labels).mean()),
        "auc": auc,
        "log_loss": float(log_loss(labels, prob_fake, labels=[0, 1])),
    }
