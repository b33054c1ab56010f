"""What a sweep leaves behind: the trial table, the plot, and the best configuration as a training config.

Plain pandas and matplotlib; the Ray layer (`raydf.distributed.tune`) hands over one record per trial:
`{"trial", "params": {key: value}, "epochs": [{"epoch", "val_loss", "val_acc", "folds_training",
"best_val_loss", "best_val_acc", "best_epoch"}], "error"}`, where `folds_training` counts the trial's folds
that go on after that epoch (0 before the last epoch: they all stopped early on patience) and `best_*`
sum up the trial's epochs so far (so its last row is right even where Tune lost earlier rows in a crash).
"""

from __future__ import annotations

import io
import math
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from raydf.config import Config, to_yaml, value_of, with_values  # noqa: E402
from raydf.errors import RaydfError  # noqa: E402
from raydf.runs.storage import RunStorage  # noqa: E402

STATUS_DONE, STATUS_ASHA, STATUS_PATIENCE, STATUS_ERROR = "done", "asha", "patience", "error"
# ASHA ranks trials with np.nanpercentile: a NaN loss would never stop its trial and an infinite one breaks
# the cutoff, so an epoch whose loss is not finite (the trial diverged) reports this instead.
DIVERGED_LOSS = 1e9


class SweepFailed(RaydfError):
    """No trial gave a usable result (all errored, or diverged from their first epoch)."""


def baseline_point(cfg: Config) -> dict[str, Any]:
    """What the first trial runs with `tune.baseline` (else {}): the config's own values of the searched keys
    other than grid keys (Tune runs every grid value with them)."""
    if not cfg.tune.baseline:
        return {}
    return {k: value_of(cfg, k) for k, spec in cfg.tune.space.items() if spec["type"] != "grid"}


def trials_table(
    records: list[dict], keys: list[str], max_epochs: int, baseline: Optional[dict[str, Any]] = None
) -> pd.DataFrame:
    """One row per trial, best first: its values of `keys`, best val loss (and the val acc and epoch where it
    was reached), epochs run, whether it stopped before `max_epochs` and why (asha, patience, error), and
    whether it ran exactly the `baseline` values (the config's own)."""
    rows = []
    for r in records:
        last = max(r["epochs"], key=lambda e: e["epoch"]) if r["epochs"] else None
        n = last["epoch"] if last else 0
        if r["error"]:
            status = STATUS_ERROR
        elif n >= max_epochs:
            status = STATUS_DONE
        else:  # its folds stopped on patience after the last epoch it reported, or else ASHA stopped it
            status = STATUS_PATIENCE if last["folds_training"] == 0 else STATUS_ASHA
        rows.append(
            {
                "trial": r["trial"],
                **{k: r["params"].get(k) for k in keys},
                "best_val_loss": last["best_val_loss"] if last else math.nan,
                "val_acc": last["best_val_acc"] if last else math.nan,
                "best_epoch": last["best_epoch"] if last else 0,
                "epochs_run": n,
                "stopped_early": n < max_epochs,
                "status": status,
                "diverged": any(e["val_loss"] >= DIVERGED_LOSS for e in r["epochs"]),
                "baseline": bool(baseline) and all(r["params"].get(k) == v for k, v in baseline.items()),
            }
        )
    table = pd.DataFrame(rows)
    return table.sort_values(["best_val_loss", "trial"], na_position="last", kind="stable").reset_index(drop=True)


def best_row(table: pd.DataFrame) -> pd.Series:
    """The trial with the lowest validation loss (a trial that errored, or diverged from its first epoch on,
    never counts)."""
    ok = _usable(table)
    if ok.empty:
        raise SweepFailed(
            "no trial finished an epoch with a finite validation loss: every one failed or "
            "diverged (see trials.csv); lower the learning rates in tune.space"
        )
    return ok.loc[ok["best_val_loss"].idxmin()]


def best_config(cfg: Config, params: dict[str, Any], train_dir: str) -> Config:
    """The sweep's config with the best trial's values: a training config, writing into `train_dir`."""
    best = with_values(cfg, params, source="the best trial")
    best.run_dir, best.resume = train_dir, None  # never the sweep's own directory (it is not empty)
    best.tune.then_train = False
    return best


def best_yaml(best: Config, sweep_dir: str, row: pd.Series, keys: list[str]) -> str:
    values = ", ".join(f"{k}={_fmt(row[k])}" for k in keys)
    return (
        f"# The best configuration of the sweep in {sweep_dir}: {row['trial']}, validation loss "
        f"{row['best_val_loss']:.4f} at epoch {row['best_epoch']}\n# ({values}).\n"
        f"# Train with it: python -m raydf.train --config {sweep_dir}/best.yaml\n" + to_yaml(best)
    )


def format_table(table: pd.DataFrame) -> str:
    """The table as aligned text, numbers rounded for reading (trials.csv keeps full precision)."""
    shown = table.copy()
    for col in shown.columns:
        if col in ("best_val_loss", "val_acc"):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.4f}" if v < 1e4 else f"{v:.3g}")
        elif shown[col].dtype.kind == "f":
            shown[col] = shown[col].map(_fmt)
    return shown.to_string(index=False)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def plot_sweep(table: pd.DataFrame, history: pd.DataFrame, space: dict[str, dict], max_epochs: int) -> bytes:
    """PNG: each trial's best val loss against each searched key (log x for loguniform keys; colour =
    sched.t_max, else epochs run; triangles = stopped early; star = best), then every trial's val loss per
    epoch. Losses far above the rest (diverged trials) are drawn clipped, on a dashed line."""
    keys = list(space)
    ok = table[table["status"] != STATUS_ERROR]
    best = best_row(table) if len(_usable(table)) else None
    cap = _cap(pd.concat([ok["best_val_loss"], history["val_loss"]]))
    colour_key = "sched.t_max" if "sched.t_max" in keys else "epochs_run"
    colours = pd.to_numeric(ok[colour_key], errors="coerce")
    vmin, vmax = (colours.min(), colours.max()) if colours.notna().any() else (0, 1)
    fig, axes = plt.subplots(
        1, len(keys) + 1, figsize=(4.4 * (len(keys) + 1), 4.2), squeeze=False, layout="constrained"
    )
    axes = axes[0]
    scatter = None
    for ax, key in zip(axes, keys):
        x, labels = _positions(ok[key])
        for stopped, marker in ((False, "o"), (True, "v")):
            part = ok["stopped_early"] == stopped
            if part.any():
                scatter = ax.scatter(
                    x[part],
                    ok["best_val_loss"][part].clip(upper=cap),
                    marker=marker,
                    s=60,
                    c=colours[part],
                    cmap="viridis",
                    vmin=vmin,
                    vmax=vmax,
                    edgecolors="black",
                    linewidths=0.5,
                )
        if best is not None:
            bx, _ = _positions(pd.Series([best[key]]), labels)
            ax.scatter(
                bx, [best["best_val_loss"]], marker="*", s=280, c="red", edgecolors="black", linewidths=0.5, zorder=3
            )
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        elif space[key]["type"] == "loguniform" or _wide_positive(ok[key]):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        _clip_line(ax, cap, ok["best_val_loss"])
    axes[0].set_ylabel("best validation loss of the trial")
    axes[0].legend(
        [_marker("o", "lightgrey", 8), _marker("v", "lightgrey", 8), _marker("*", "red", 14)],
        ["all epochs", "stopped early", "best"],
        fontsize=8,
        loc="best",
    )
    if scatter is not None:
        fig.colorbar(scatter, ax=list(axes[: len(keys)]), label=colour_key, pad=0.01, aspect=30)
    ax = axes[-1]
    for trial, rows in history.sort_values("epoch").groupby("trial", sort=False):
        is_best = best is not None and trial == best["trial"]
        ax.plot(
            rows["epoch"],
            rows["val_loss"].clip(upper=cap),
            marker="o",
            ms=4,
            lw=2.5 if is_best else 1,
            color="red" if is_best else "grey",
            alpha=1 if is_best else 0.7,
            zorder=3 if is_best else 2,
        )
    _clip_line(ax, cap, history["val_loss"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_xticks(range(1, max_epochs + 1))
    ax.set_xlim(0.7, max_epochs + 0.3)
    ax.set_title("every trial per epoch (red: best)", fontsize=9)
    stopped = int(table["stopped_early"].sum())
    title = f"Sweep: {len(table)} trials, {stopped} stopped early"
    fig.suptitle(
        title + (f"; lowest validation loss {best['best_val_loss']:.4f} ({best['trial']})" if best is not None else "")
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _marker(shape: str, colour: str, size: float) -> Line2D:
    return Line2D([], [], ls="", marker=shape, color=colour, markeredgecolor="black", markersize=size)


def _cap(losses: pd.Series) -> float:
    """Top of the y axis: 3x the median loss (a diverged trial's 1e9 would flatten every other point)."""
    finite = losses[losses < DIVERGED_LOSS].dropna()
    return float(min(losses.max(), 3 * finite.median())) if len(finite) else 1.0


def _clip_line(ax, cap: float, values: pd.Series) -> None:
    ax.grid(alpha=0.3)
    if (values > cap).any():
        ax.axhline(cap, ls="--", lw=0.8, color="black")
        ax.annotate("above: clipped", (0.01, cap), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")


def _usable(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["status"] != STATUS_ERROR) & (table["best_val_loss"] < DIVERGED_LOSS)]


def _positions(values: pd.Series, labels: list[str] | None = None) -> tuple[pd.Series, list[str] | None]:
    """Numbers as they are; anything else (lists, strings) as category positions with labels."""
    numeric = pd.to_numeric(values, errors="coerce")
    if labels is None and numeric.notna().all():
        return numeric, None
    labels = labels or sorted({str(v) for v in values})
    return values.map(lambda v: labels.index(str(v)) if str(v) in labels else math.nan), labels


def _wide_positive(values: pd.Series) -> bool:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return len(v) > 1 and (v > 0).all() and v.max() / v.min() > 50


def history_frame(records: list[dict]) -> pd.DataFrame:
    """One row per trial and epoch: trial, epoch, val_loss, val_acc."""
    return pd.DataFrame(
        [{"trial": r["trial"], **e} for r in records for e in r["epochs"]],
        columns=["trial", "epoch", "val_loss", "val_acc"],
    )


def write_report(storage: RunStorage, cfg: Config, records: list[dict]) -> Config:
    """trials.csv, sweep.png and best.yaml in the sweep's run directory; prints the table; returns the best
    config (a training config writing into RUN_DIR/train)."""
    keys = list(cfg.tune.space)
    table = trials_table(records, keys, cfg.train.epochs, {k: value_of(cfg, k) for k in keys})
    storage.write_text("trials.csv", table.to_csv(index=False))
    storage.write_bytes("sweep.png", plot_sweep(table, history_frame(records), cfg.tune.space, cfg.train.epochs))
    print(f"\n{format_table(table)}\n", flush=True)
    row = best_row(table)
    best = best_config(cfg, {k: _plain(row[k]) for k in keys}, f"{cfg.run_dir.rstrip('/')}/train")
    storage.write_text("best.yaml", best_yaml(best, cfg.run_dir, row, keys))
    note = ": the config's own values, no trial beat them" if row["baseline"] else ""
    print(
        f"best: {row['trial']} (validation loss {row['best_val_loss']:.4f}){note}; {cfg.run_dir}/best.yaml, "
        f"trials.csv, sweep.png written",
        flush=True,
    )
    return best


def _plain(v: Any) -> Any:
    """numpy scalars from the table as Python numbers (for the config)."""
    return v.item() if hasattr(v, "item") else v
