"""The pictures of a run (PNG, matplotlib): learning curves, ROC, confusion matrices, test P(fake) histogram.

Each function takes plain tables (the run directory's CSVs) and writes one file. Figures are built with
`matplotlib.figure.Figure` (no pyplot, no global state, no display needed) at a fixed size, so a plot is
always `figsize x DPI` pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc, confusion_matrix, roc_curve

from raydf import signals

DPI = 100
CLASS_NAMES = ("real", "fake")  # label 0, 1
THRESHOLD = 0.5
ROC_POINTS = 4000  # the most points a ROC curve is drawn with


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # then renamed: an interrupted report leaves no half picture
    try:
        with signals.partial_file(str(tmp)):
            # no bbox_inches="tight": the pixel size stays figsize x DPI
            fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png")
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def learning_curves(history: pd.DataFrame, best_epochs: dict, path: Path) -> Path:
    """Train/val loss and val accuracy per epoch for every model; each one's best epoch starred (1200x450).

    One model per fold: `best_epochs` is {fold: epoch}. A run of several seeds (a `seed` column): {(seed, fold): epoch}.
    """
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    by = ["seed", "fold"] if "seed" in history.columns else ["fold"]
    names = []
    for i, (model, rows) in enumerate(history.sort_values([*by, "epoch"]).groupby(by)):
        model = tuple(int(v) for v in model)
        fold = model if len(model) > 1 else model[0]
        names.append(f"seed {model[0]} fold {model[1]}" if len(model) > 1 else f"fold {fold}")
        color = f"C{i % 10}"
        ax_loss.plot(rows["epoch"], rows["train_loss"], "--", color=color, alpha=0.7)
        ax_loss.plot(rows["epoch"], rows["val_loss"], "-o", color=color, markersize=3)
        ax_acc.plot(rows["epoch"], rows["val_acc"], "-o", color=color, markersize=3)
        best = rows[rows["epoch"] == best_epochs.get(fold, -1)]
        ax_loss.plot(best["epoch"], best["val_loss"], "*", color=color, markersize=16, markeredgecolor="black")
        ax_acc.plot(best["epoch"], best["val_acc"], "*", color=color, markersize=16, markeredgecolor="black")
    ax_loss.set(title="Loss (cross-entropy)", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    folds = [Line2D([], [], color=f"C{i % 10}", label=name) for i, name in enumerate(names)]
    styles = [
        Line2D([], [], color="gray", ls="-", marker="o", markersize=3, label="validation"),
        Line2D([], [], color="gray", ls="--", label="training"),
        Line2D(
            [],
            [],
            color="gray",
            ls="",
            marker="*",
            markersize=12,
            markeredgecolor="black",
            label="best epoch (lowest val loss)",
        ),
    ]
    ax_loss.legend(handles=folds + styles, fontsize=8)
    ax_acc.legend(handles=folds + styles[:1] + styles[2:], fontsize=8, loc="lower right")
    fig.suptitle(f"Learning curves of {len(folds)} {'models' if len(by) > 1 else 'folds'}")
    return _save(fig, path)


def _two_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def roc(oof: pd.DataFrame, path: Path, test: Optional[pd.DataFrame] = None) -> Path:
    """ROC of the out-of-fold P(fake), and of the test set when its labels are known; AUC in the legend (600x600)."""
    return roc_sets({"out-of-fold": oof} | ({"test": test} if test is not None else {}), path, unit="images")


def roc_sets(sets: dict[str, pd.DataFrame], path: Path, unit: str = "rows") -> Path:
    """The ROC curves of several labelled sets (columns label, prob_fake) side by side, AUC in the legend."""
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.subplots()
    for i, (name, frame) in enumerate(sets.items()):
        color = f"C{[0, 3, 2, 1, 4, 5, 6, 7, 8, 9][i % 10]}"
        y, p = frame["label"].to_numpy(int), frame["prob_fake"].to_numpy(float)
        if not _two_classes(y):
            ax.plot([], [], color=color, label=f"{name}: one class only, ROC undefined")
            continue
        fpr, tpr, _ = roc_curve(y, p)
        # roc_auc_score is the area under this same curve: not sorted a second time
        label = f"{name} ({len(y)} {unit}): AUC {auc(fpr, tpr):.4f}"
        ax.plot(*_thin(fpr, tpr), color=color, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance (AUC 0.5)")
    ax.set(
        title="ROC curve (positive class: fake)",
        xlabel="false positive rate (real images called fake)",
        ylabel="true positive rate (fakes caught)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)


def _thin(x: np.ndarray, y: np.ndarray, most: int = ROC_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `most` points of a curve, evenly spread along it (both ends kept): a million-row ROC is drawn as a
    few thousand points, which a 600 px picture cannot tell apart from all of them."""
    if len(x) <= most:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, most).round().astype(np.int64))
    return x[keep], y[keep]


def confusion(panels: dict[str, pd.DataFrame], path: Path) -> Path:
    """Confusion matrices at P(fake) > 0.5, one panel per table (e.g. out-of-fold, test); 550 x 500 px per panel."""
    fig = Figure(figsize=(5.5 * len(panels), 5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, frame) in zip(axes, panels.items()):
        y = frame["label"].to_numpy(int)
        pred = (frame["prob_fake"].to_numpy(float) > THRESHOLD).astype(int)
        cm = confusion_matrix(y, pred, labels=[0, 1])
        rows = cm.sum(axis=1, keepdims=True)
        share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]}\n{share[i, j]:.1%} of true {CLASS_NAMES[i]}",
                    ha="center",
                    va="center",
                    fontsize=11,
                    color="white" if share[i, j] > 0.5 else "black",
                )
        accuracy = np.trace(cm) / max(cm.sum(), 1)
        ax.set(
            title=f"{name}: {cm.sum()} images, accuracy {accuracy:.4f}",
            xlabel="predicted",
            ylabel="true",
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=CLASS_NAMES,
            yticklabels=CLASS_NAMES,
        )
    fig.suptitle(f"Confusion matrix at P(fake) > {THRESHOLD}")
    return _save(fig, path)


def probability_histogram(submission: pd.DataFrame, path: Path, labels: Optional[np.ndarray] = None) -> Path:
    """Histogram of the test set's soft-vote P(fake), split by true class when `labels` are known (800x450)."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, 1, 41)
    p = submission["prob_fake"].to_numpy(float)
    if labels is None:
        ax.hist(p, bins=bins, color="C0", alpha=0.8, label=f"all test images ({len(p)})")
    else:
        labels = np.asarray(labels, dtype=int)
        for value, color in ((0, "C0"), (1, "C3")):
            ax.hist(
                p[labels == value],
                bins=bins,
                color=color,
                alpha=0.6,
                label=f"true {CLASS_NAMES[value]} ({int((labels == value).sum())})",
            )
    ax.axvline(THRESHOLD, color="black", ls="--", label=f"threshold {THRESHOLD}")
    ax.set(
        title="Test set: soft-vote P(fake)", xlabel="P(fake), mean of the fold softmaxes", ylabel="images", xlim=(0, 1)
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def synthetic_fakes(
    sources: np.ndarray, fakes: np.ndarray, masks: np.ndarray, path: Path, landmarks: Optional[Sequence] = None
) -> Path:
    """What `data.synthetic_fakes` teaches: each real face (N, H, W, 3) beside its self-blended fake and the mask
    it was blended through (N, H, W), one row per face; the face `landmarks` the mask followed ((5, 2) per face,
    None or NaN for none), as dots on the mask."""
    n = len(sources)
    fig = Figure(figsize=(6.6, 2.2 * n))
    for i in range(n):
        for j, (img, title) in enumerate(
            ((sources[i], "real (source)"), (fakes[i], "self-blended fake"), (masks[i], "blend mask"))
        ):
            ax = fig.add_subplot(n, 3, 3 * i + j + 1)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None)
            if j == 2 and landmarks is not None and landmarks[i] is not None and np.isfinite(landmarks[i]).all():
                ax.plot(*np.asarray(landmarks[i]).T, "o", color="tab:red", markersize=2.5)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def reliability(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: Path, bins: int = 15) -> Path:
    """Reliability diagrams, one panel per set ({set: {curve: (labels, P(fake))}}, e.g. out of fold and test, each
    before and after calibration): the fraction of fakes against the mean P(fake) in each non-empty bin of `bins`
    equal-width bins of [0, 1] (the bins of the ECE), marker area by the bin's share of rows; the diagonal is a
    calibrated model (500 px high, 500 px wide per panel)."""
    fig = Figure(figsize=(5 * len(panels), 5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, curves) in zip(axes, panels.items()):
        ax.plot([0, 1], [0, 1], color="gray", ls=":", label="calibrated")
        for i, (label, (y, p)) in enumerate(curves.items()):
            y, p = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), 0, 1)
            b = np.minimum((p * bins).astype(int), bins - 1)
            counts = np.bincount(b, minlength=bins)
            used = counts > 0
            frac = np.bincount(b, y, bins)[used] / counts[used]
            mean = np.bincount(b, p, bins)[used] / counts[used]
            ax.plot(mean, frac, "-", color=f"C{i}", alpha=0.8)
            ax.scatter(mean, frac, s=counts[used] / len(p) * 400 + 8, color=f"C{i}", alpha=0.8, label=label)
        ax.set(
            title=name,
            xlabel="mean P(fake) in the bin",
            ylabel="fraction of fakes in the bin",
            xlim=(0, 1),
            ylim=(0, 1),
            aspect="equal",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability ({bins} bins; marker area = share of rows)")
    return _save(fig, path)
