"""Plots, report.md and the short report: written for a finished run, rebuilt from its files alone."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from raydf.errors import ConfigError
from raydf.report import main, parse_args
from raydf.runs import plots
from raydf.runs.report import bad_input_count, build_report, short_report

# Pixel sizes: figure size in inches x 100 dpi (see raydf/plots.py).
PNG_SIZES = {
    "learning_curves.png": (1200, 450),
    "roc.png": (600, 600),
    "confusion_matrix.png": (1100, 500),
    "test_prob_fake.png": (800, 450),
    "reliability.png": (1000, 500),  # out of fold and test, before and after calibration
}


def _assert_png(path, size):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == size, path
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10, f"{path} looks blank"


def _table(text: str, heading: str) -> list[list[str]]:
    """Rows of the first markdown table under `## heading` (header and separator dropped)."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_plots_report_and_tensorboard_are_written_for_a_finished_run(finished_run):
    run_dir, _ = finished_run
    for name, size in PNG_SIZES.items():
        _assert_png(run_dir / name, size)
    report = (run_dir / "report.md").read_text()
    for name in PNG_SIZES:
        assert f"]({name})" in report  # linked relative to the run directory
    for fold in (0, 1):
        assert list((run_dir / "tensorboard" / f"fold{fold}").glob("events.out.tfevents.*"))


def test_report_numbers_equal_the_summary(finished_run):
    run_dir, _ = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    report = (run_dir / "report.md").read_text()

    metrics = {row[0]: row[1:] for row in _table(report, "Metrics")}
    for key, name, images in (
        ("cv", "cross-validation (out of fold)", 64),
        ("test", "test", 32),
        ("test_uncalibrated", "test, before calibration", 32),
    ):
        n, acc, auc, loss, ap, eer, ece, brier = metrics[name]
        assert int(n) == images
        m = summary[key]
        assert [float(acc), float(auc), float(loss), float(ap), float(eer), float(ece), float(brier)] == pytest.approx(
            [m["accuracy"], m["auc"], m["log_loss"], m["ap"], m["eer"], m["ece"], m["brier"]], abs=5e-5
        )
    calibration = report.split("## Calibration and threshold\n", 1)[1].split("\n## ", 1)[0]
    assert f"temperature (T = {summary['calibration']['temperature']:.4f})" in calibration
    assert f"P(fake) > {summary['threshold']['value']:.4f}" in calibration
    folds = _table(report, "Folds")
    assert len(folds) == len(summary["folds"]) == 2
    for row, f in zip(folds, summary["folds"]):
        assert [int(row[0]), int(row[1]), int(row[2])] == [f["fold"], f["best_epoch"], f["epochs_run"]]
        assert [float(row[3]), float(row[4])] == pytest.approx([f["val_loss"], f["val_acc"]], abs=5e-5)
        assert float(row[5]) == pytest.approx(f["finished_at"] - f["started_at"], abs=0.05)
    timings = dict(_table(report, "Timings"))
    assert float(timings["soft vote over 32 test images"]) == pytest.approx(
        summary["timings"]["inference_seconds"], abs=0.05
    )
    assert float(timings["whole run"]) == pytest.approx(summary["wall_seconds"], abs=0.05)


def test_report_command_rebuilds_everything_from_the_run_directory(finished_run, tmp_path, capsys):
    run_dir, _ = finished_run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.png", "report.md", "checkpoints", "tensorboard"))
    assert main(parse_args([str(copy)])) == 0
    for name, size in PNG_SIZES.items():
        _assert_png(copy / name, size)
    assert (copy / "report.md").read_text() == (run_dir / "report.md").read_text()
    printed = capsys.readouterr().out
    assert f"report: {copy / 'report.md'}" in printed and "cv: accuracy" in printed


def test_short_report_has_the_fold_table_and_the_metrics(finished_run):
    run_dir, _ = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    text = short_report(run_dir)
    lines = text.splitlines()
    assert len(lines) <= 10
    assert re.match(r"^\s+0\s+1\s+1\s+" + f"{summary['folds'][0]['val_loss']:.4f}", lines[2])
    assert f"  cv: accuracy {summary['cv']['accuracy']:.4f}  auc {summary['cv']['auc']:.4f}" in text
    assert f"test: accuracy {summary['test']['accuracy']:.4f}" in text
    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in text


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"not a finished raydf run: missing summary\.json"):
        build_report(tmp_path)


def test_plots_without_test_labels(tmp_path):
    """No test labels: one confusion panel, the histogram of all test images; sizes as documented."""
    rng = np.random.default_rng(0)
    oof = pd.DataFrame({"label": np.arange(40) % 2, "prob_fake": rng.random(40)})
    sub = pd.DataFrame({"image": [f"{i}.jpg" for i in range(20)], "prob_fake": rng.random(20)})
    history = pd.DataFrame(
        [
            {"fold": k, "epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e + 0.1 * (e == 3), "val_acc": 0.5 + 0.1 * e}
            for k in range(3)
            for e in range(1, 4)
        ]
    )
    _assert_png(plots.confusion({"out-of-fold": oof}, tmp_path / "cm.png"), (550, 500))
    _assert_png(plots.probability_histogram(sub, tmp_path / "h.png"), (800, 450))
    _assert_png(plots.roc(oof, tmp_path / "roc.png"), (600, 600))
    _assert_png(plots.learning_curves(history, {0: 2, 1: 2, 2: 2}, tmp_path / "lc.png"), (1200, 450))


@pytest.mark.parametrize(
    "value, count",
    [
        (3, 3),
        ([{"path": "a"}, {"path": "b"}], 2),
        ({"count": 4}, 4),
        ({"train": ["a"], "test": ["b", "c"]}, 3),
        (None, None),
    ],
)
def test_bad_input_count_reads_the_shapes_summary_may_hold(value, count):
    assert bad_input_count(value) == count
