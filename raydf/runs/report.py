"""A run's report: `report.md` with the config, the per-fold table, cross-validation and test metrics, the
plots, timings and the bad-input count, built from the run directory's files alone. `short_report` is the few
lines `python -m raydf.train` prints at the end.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from raydf.errors import ConfigError
from raydf.runs import plots
from raydf.runs.model_key import ModelKey
from raydf.runs.storage import RunStorage

log = logging.getLogger(__name__)


REPORT = "report.md"
EXPLAIN_INDEX = "explain/index.csv"  # the heatmaps of predict.explain (raydf.inference.explain)
TEST_LABELS = "test_labels.csv"  # image, label: the test set's true labels, when known (for the test plots)
PLOT_FILES = {
    "learning_curves": "learning_curves.png",
    "roc": "roc.png",
    "confusion": "confusion_matrix.png",
    "test_probabilities": "test_prob_fake.png",
    "reliability": "reliability.png",
}
PLOT_TITLES = {
    "learning_curves": "Learning curves",
    "roc": "ROC curve",
    "confusion": "Confusion matrix",
    "test_probabilities": "Test set P(fake)",
    "reliability": "Reliability diagram (calibration)",
}
CALIBRATED = "prob_fake_calibrated"  # oof.csv / oof_sources.csv: the calibrated OOF P(fake) (calibration.json)
UNCALIBRATED = "prob_fake_uncalibrated"  # test_labels.csv: the soft vote before calibration


@dataclass
class RunFiles:
    """What the report is made of: the run directory's own files."""

    run_dir: Path
    summary: dict[str, Any]
    config_text: str
    history: pd.DataFrame
    oof: pd.DataFrame
    submission: Optional[pd.DataFrame] = None
    test_labels: Optional[pd.DataFrame] = None  # aligned with `submission`, row for row
    explain: Optional[pd.DataFrame] = None  # kind, rank, image, prob_fake, heatmap (a PNG in explain/)
    oof_sources: Optional[pd.DataFrame] = None  # runs on extracted faces: out-of-fold P(fake) per video/photo

    @property
    def test_truth(self) -> Optional[pd.DataFrame]:
        """Submission rows with their true label (columns label, prob_fake), when the labels are known."""
        if self.submission is None or self.test_labels is None:
            return None
        return pd.DataFrame(
            {"label": self.test_labels["label"].to_numpy(), "prob_fake": self.submission["prob_fake"].to_numpy()}
        )


def read_run(run_dir: Path) -> RunFiles:
    run_dir = Path(run_dir)
    needed = ["summary.json", "config.yaml", "history.csv", "oof.csv"]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise ConfigError(f"{run_dir} is not a finished raydf run: missing {', '.join(missing)}")
    run = RunFiles(
        run_dir=run_dir,
        summary=json.loads((run_dir / "summary.json").read_text()),
        config_text=(run_dir / "config.yaml").read_text(),
        history=pd.read_csv(run_dir / "history.csv"),
        oof=pd.read_csv(run_dir / "oof.csv"),
    )
    if (run_dir / "oof_sources.csv").is_file():
        run.oof_sources = pd.read_csv(run_dir / "oof_sources.csv")
    if (run_dir / EXPLAIN_INDEX).is_file():
        run.explain = pd.read_csv(run_dir / EXPLAIN_INDEX)
    if (run_dir / "submission.csv").is_file():
        run.submission = pd.read_csv(run_dir / "submission.csv")
        if (run_dir / TEST_LABELS).is_file():
            labels = pd.read_csv(run_dir / TEST_LABELS)
            if labels["image"].astype(str).tolist() == run.submission["image"].astype(str).tolist():
                run.test_labels = labels
            else:
                log.warning(
                    "%s does not list the images of submission.csv in order: test plots without labels",
                    run_dir / TEST_LABELS,
                )
    return run


def write_plots(run: RunFiles) -> dict[str, Path]:
    """Every plot the run's files allow, as {name: path}."""
    out = {k: run.run_dir / v for k, v in PLOT_FILES.items()}
    # {fold: epoch}, or {(seed, fold): epoch} in a run of several seeds (its history has a seed column)
    best = {(f["seed"], f["fold"]) if "seed" in f else f["fold"]: f["best_epoch"] for f in run.summary["folds"]}
    truth = run.test_truth
    written = {
        "learning_curves": plots.learning_curves(run.history, best, out["learning_curves"]),
        "roc": plots.roc(run.oof, out["roc"], test=truth),
    }
    panels = {"out-of-fold": run.oof} | ({"test": truth} if truth is not None else {})
    written["confusion"] = plots.confusion(panels, out["confusion"])
    if run.submission is not None:
        labels = truth["label"].to_numpy() if truth is not None else None
        written["test_probabilities"] = plots.probability_histogram(run.submission, out["test_probabilities"], labels)
    panels = _reliability_panels(run)
    if panels:
        written["reliability"] = plots.reliability(panels, out["reliability"])
    return written


def _reliability_panels(run: RunFiles) -> dict[str, dict[str, tuple]]:
    """Out of fold (per video/photo for runs on faces) and test, before and after calibration, where the files have
    both (a run fitted with calibration.json)."""
    panels: dict[str, dict[str, tuple]] = {}
    oof, level = (run.oof_sources, "per video/photo") if run.oof_sources is not None else (run.oof, "")
    if CALIBRATED in oof.columns:
        oof = oof.dropna(subset=["prob_fake", CALIBRATED])
        panels[f"out of fold {level}".strip()] = {
            "before": (oof["label"], oof["prob_fake"]),
            "after (fitted here)": (oof["label"], oof[CALIBRATED]),
        }
    truth = run.test_truth
    if truth is not None and UNCALIBRATED in run.test_labels.columns:
        known = truth["label"].notna().to_numpy()
        panels["test"] = {
            "before": (truth["label"][known], run.test_labels[UNCALIBRATED][known]),
            "after": (truth["label"][known], truth["prob_fake"][known]),
        }
    return panels


def bad_input_count(value: Any) -> Optional[int]:
    """The number of bad inputs in `summary["bad_inputs"]`: a count, a list of them, or a dict with a count."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, dict):
        if "count" in value:
            return bad_input_count(value["count"])
        counts = [bad_input_count(v) for v in value.values()]
        return sum(c for c in counts if c is not None)
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def _num(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _model_label(entry: dict) -> str:
    """`fold 3`, or `seed 7 fold 3` for an entry of a run of several seeds."""
    return ModelKey.of(entry).label


def _fold_seconds(fold: dict) -> float:
    return fold["finished_at"] - fold["started_at"]


def _metric_rows(run: RunFiles) -> list[tuple[str, dict, int]]:
    """(set, metrics, rows scored); with extracted faces each set is scored per face and per video/photo."""
    s = run.summary
    faces = "cv_sources" in s or "test_faces" in s
    rows = [("cross-validation (out of fold)" + (", per face" if faces else ""), s["cv"], len(run.oof))]
    for seed, m in s.get("cv_seeds", {}).items():  # each seed's models alone, beside the mean over seeds above
        rows.append((f"cross-validation, seed {seed} alone" + (", per face" if faces else ""), m, len(run.oof)))
    if "cv_sources" in s:
        rows.append(("cross-validation, per video/photo", s["cv_sources"], s["cv_sources"].get("n", 0)))
    if "test_faces" in s:
        rows.append(("test, per face", s["test_faces"], s["test_faces"].get("n", 0)))
    if "test" in s:
        name = "test, per video/photo" if "test_faces" in s else "test"
        rows.append((name, s["test"], len(run.submission) if run.submission is not None else 0))
    if "test_uncalibrated" in s:
        name = "test, before calibration" + (", per video/photo" if "test_faces" in s else "")
        rows.append((name, s["test_uncalibrated"], len(run.submission) if run.submission is not None else 0))
    return rows


def _calibration_section(run: RunFiles) -> list[str]:
    """What calibration.json did: method, parameters, out-of-fold log loss and ECE before/after, the threshold."""
    s = run.summary
    if "calibration" not in s:
        return []
    c, t = s["calibration"], s.get("threshold", {})
    how = c["method"] + (f" (T = {c['temperature']:.4f})" if "temperature" in c else "")
    how += {"mean_prob": " on the mean of the models' P(fake)", "mean_logit": " on the mean of the models' logits"}.get(
        c.get("pool"), ""
    )
    lines = [
        "",
        "## Calibration and threshold",
        "",
        f"`predict.calibration={c.get('asked', c['method'])}`: {how}, fitted on {c.get('units', 'n/a')} out-of-fold "
        f"{c.get('level', 'row')}s (`calibration.json`). Accuracy, AUC and the other metrics of the test set score "
        "the calibrated P(fake); the cross-validation rows score the out-of-fold P(fake) as the folds gave it.",
    ]
    if c.get("fallback"):
        lines += ["", f"Not fitted: {c['fallback']}; the soft vote is the mean of the folds' P(fake)."]
    if "ensemble" in c:
        e = c["ensemble"]
        lines += [
            "",
            f"T is fitted to the vote of all {e['models']} models, simulated for every out-of-fold row from their "
            f"spread on {e['spread_images']} test images (logit variance {e['member_var']:.3f}; no label read): one "
            f"model's out-of-fold rows alone would ask for T = {e['temperature_one_row']:.4f}. The out-of-fold table "
            "below scores single models' rows at the vote's T.",
        ]
    if "oof_before" in c:
        b, a = c["oof_before"], c["oof_after"]
        lines += [
            "",
            "| out of fold | log loss | ECE |",
            "|---|---:|---:|",
            f"| before | {_num(b['log_loss'])} | {_num(b['ece'])} |",
            f"| after (fitted on these rows) | {_num(a['log_loss'])} | {_num(a['ece'])} |",
        ]
    if t:
        test_acc = s.get("threshold_test_accuracy", {})
        lines += [
            "",
            f"`predict.threshold={t['mode']}`: label = fake when P(fake) > {t['value']:.4f}; out-of-fold accuracy "
            f"{_num(t.get('cv_accuracy'))} (at 0.5: {_num(t.get('cv_accuracy_at_0.5'))})"
            + (
                f", test accuracy {_num(test_acc.get('at_threshold'))} (at 0.5: {_num(test_acc.get('at_0.5'))})"
                if test_acc
                else ""
            )
            + ". `submission.csv` keeps P(fake).",
        ]
    if (run.run_dir / PLOT_FILES["reliability"]).is_file():
        lines += ["", "The reliability diagram (Plots) shows P(fake) against the fraction of fakes, before and after."]
    return lines


def render(run: RunFiles, plot_files: dict[str, Path]) -> str:
    """report.md as text (plots linked relative to the run directory)."""
    s, folds = run.summary, run.summary["folds"]
    started = min(f["started_at"] for f in folds)
    n_test = len(run.submission) if run.submission is not None else 0
    seeds = sorted({f["seed"] for f in folds if "seed" in f})  # a run of several seeds: one entry per model
    what = f"{len(folds)} folds"
    if seeds:
        what = f"{len(folds)} models ({len(folds) // len(seeds)} folds x {len(seeds)} seeds)"
    lines = [
        f"# raydf run `{run.run_dir.name}`",
        "",
        f"{what} trained in parallel on {len(run.oof)} training images, started "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}"
        + (f"; soft vote of the {what} over {n_test} test images." if n_test else "."),
        "",
        "## Metrics",
        "",
        "| set | rows | accuracy | ROC AUC | log loss | AP | EER | ECE | Brier |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m, n in _metric_rows(run):  # AP, EER, ECE, Brier: n/a for runs made before raydf reported them
        lines.append(
            f"| {name} | {n} | {_num(m['accuracy'])} | {_num(m['auc'])} | {_num(m['log_loss'])} "
            f"| {_num(m.get('ap'))} | {_num(m.get('eer'))} | {_num(m.get('ece'))} | {_num(m.get('brier'))} |"
        )
    if "test" not in s:
        lines += ["", "No test metrics: " + ("the test set's labels are not known." if n_test else "no test set.")]
    bad = bad_input_count(s.get("bad_inputs"))
    if bad is not None:
        per_set = s["bad_inputs"] if isinstance(s["bad_inputs"], dict) else {}
        detail = ", ".join(f"{k} {v}" for k, v in per_set.items())
        lines += [
            "",
            f"Unreadable images left out: {bad}" + (f" ({detail})" if detail else "") + "; listed in `bad_inputs.csv`.",
        ]
    lines += _calibration_section(run)
    lines += [
        "",
        "## Folds",
        "",
        "Best epoch = lowest validation loss; its weights are the fold's checkpoint.",
        "",
        ("| seed " if seeds else "") + "| fold | best epoch | epochs run | val loss | val acc | seconds | node | pid "
        "| attempts |",
        ("|---:" if seeds else "") + "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for f in folds:
        lines.append(
            (f"| {f['seed']} " if "seed" in f else "")
            + f"| {f['fold']} | {f['best_epoch']} | {f['epochs_run']} | {_num(f['val_loss'])} | "
            f"{_num(f['val_acc'])} | {_fold_seconds(f):.1f} | {str(f['node_id'])[:8]} | {f['pid']} | "
            f"{f['attempts']} |"
        )
    lines += ["", "## Plots", ""]
    for name, path in plot_files.items():
        lines += [f"### {PLOT_TITLES[name]}", "", f"![{PLOT_TITLES[name]}]({path.relative_to(run.run_dir)})", ""]
    if (run.run_dir / "synthetic_fakes.png").is_file():
        lines += [
            "## Self-blended fakes",
            "",
            "`data.synthetic_fakes` blends real faces with altered copies of themselves: examples of what the network "
            "is taught is fake (real face, its self-blended fake, the mask it was blended through).",
            "",
            "![self-blended fakes](synthetic_fakes.png)",
            "",
        ]
    lines += _explain_section(run)
    lines += ["## Timings", "", "| step | seconds |", "|---|---:|"]
    timings = s.get("timings", {})
    for key, label in (
        ("preflight_seconds", "check the inputs (every image decoded once, or found in the pre-flight cache)"),
        ("share_images_seconds", "share the training images with the folds (data.cache)"),
        ("folds_seconds", f"train {len(folds)} folds (in parallel, wall clock)"),
        ("calibration_seconds", "fit the calibration and threshold on the out-of-fold data"),
        ("inference_seconds", f"soft vote over {n_test} test images"),
    ):
        if key in timings:
            lines.append(f"| {label} | {timings[key]:.1f} |")
    for f in folds:
        lines.append(f"| {_model_label(f)} | {_fold_seconds(f):.1f} |")
    if "wall_seconds" in s:
        lines.append(f"| whole run | {s['wall_seconds']:.1f} |")
    lines += ["", "## Config", "", "```yaml", run.config_text.rstrip(), "```", ""]
    return "\n".join(lines)


def _explain_section(run: RunFiles) -> list[str]:
    """The heatmaps of the most confident test fakes and reals: the model's input, and Grad-CAM of P(fake) over it."""
    if run.explain is None or run.explain.empty:
        return []
    lines = [
        "## Where the models look",
        "",
        "Grad-CAM of the soft vote's P(fake) over each image as the models see it (left; right: red = raises "
        "P(fake) most), for the test images scored most surely fake and most surely real.",
        "",
    ]
    for kind in ("fake", "real"):
        rows = run.explain[run.explain["kind"] == kind]
        if rows.empty:
            continue
        faces = "source" in rows.columns and (rows["source"].astype(str) != rows["image"].astype(str)).any()
        head = "video/photo (face crop)" if faces else "image"
        lines += [f"### Most confident {kind}s", "", f"| {head} | P(fake) | heatmap |", "|---|---:|---|"]
        for r in rows.itertuples():
            # A face crop's own file name (f000000_0.png) says nothing: name the video/photo it came from.
            name = f"`{r.source}` (`{Path(str(r.image)).name}`)" if faces else f"`{Path(str(r.image)).name}`"
            lines.append(f"| {name} | {r.prob_fake:.4f} | ![{kind} {r.rank}](explain/{r.heatmap}) |")
        lines.append("")
    return lines


def build_report(run_dir: Path) -> Path:
    """Write the plots and report.md into `run_dir`; returns the report's path."""
    run = read_run(Path(run_dir))
    text = render(run, write_plots(run))
    path = run.run_dir / REPORT
    RunStorage(path.parent).write_text(path.name, text)
    return path


def short_report(run_dir: Path) -> str:
    """A few lines for the end of a run: per-fold table, CV/test metrics, where the report and logs are."""
    run_dir = Path(run_dir)
    s = json.loads((run_dir / "summary.json").read_text())
    several = any("seed" in f for f in s["folds"])
    header = ("seed  " if several else "") + "fold  best epoch  epochs  val loss  val acc  seconds"
    lines = [f"run directory: {run_dir}", header]
    for f in s["folds"]:
        lines.append(
            (f"{f['seed']:>4}  " if several else "")
            + f"{f['fold']:>4}  {f['best_epoch']:>10}  {f['epochs_run']:>6}  {f['val_loss']:>8.4f}  "
            f"{f['val_acc']:>7.4f}  {_fold_seconds(f):>7.0f}"
        )
    for name in ("cv", "cv_sources", "test_faces", "test"):
        if name in s:
            m = s[name]
            lines.append(
                f"{name:>4}: accuracy {_num(m['accuracy'])}  auc {_num(m['auc'])}  log loss {_num(m['log_loss'])}"
            )
    if "calibration" in s:
        c, t = s["calibration"], s.get("threshold", {})
        lines.append(
            f"calibration: {c['method']}"
            + (f" T={c['temperature']:.3f}" if "temperature" in c else "")
            + (f"; threshold {t['mode']} = {t['value']:.4f}" if t else "")
        )
    bad = bad_input_count(s.get("bad_inputs"))
    if bad:
        lines.append(f"bad inputs: {bad} (see summary.json)")
    if (run_dir / REPORT).is_file():
        lines.append(f"report: {run_dir / REPORT}")
    if (run_dir / "tensorboard").is_dir():
        lines.append(f"logs: tensorboard --logdir {run_dir / 'tensorboard'}")
    return "\n".join(lines)
