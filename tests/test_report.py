"""Plots and report.md from a run directory's tables."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from raydf import plots
from raydf.errors import ConfigError
from raydf.report import bad_input_count, build_report

# Pixel sizes: figure size in inches x 100 dpi (see raydf/plots.py).
PNG_SIZES = {"learning_curves.png": (1200, 450), "roc.png": (600, 600), "confusion_matrix.png": (1100, 500),
             "test_prob_fake.png": (800, 450)}


def _assert_png(path, size):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == size, path
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10, f"{path} looks blank"


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"not a finished raydf run: missing summary\.json"):
        build_report(tmp_path)


def test_plots_without_test_labels(tmp_path):
    """No test labels: one confusion panel, the histogram of all test images; sizes as documented."""
    rng = np.random.default_rng(0)
    oof = pd.DataFrame({"label": np.arange(40) % 2, "prob_fake": rng.random(40)})
    sub = pd.DataFrame({"image": [f"{i}.jpg" for i in range(20)], "prob_fake": rng.random(20)})
    history = pd.DataFrame([{"fold": k, "epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e + 0.1 * (e == 3),
                             "val_acc": 0.5 + 0.1 * e} for k in range(3) for e in range(1, 4)])
    _assert_png(plots.confusion({"out-of-fold": oof}, tmp_path / "cm.png"), (550, 500))
    _assert_png(plots.probability_histogram(sub, tmp_path / "h.png"), (800, 450))
    _assert_png(plots.roc(oof, tmp_path / "roc.png"), (600, 600))
    _assert_png(plots.learning_curves(history, {0: 2, 1: 2, 2: 2}, tmp_path / "lc.png"), (1200, 450))


@pytest.mark.parametrize("value, count", [(3, 3), ([{"path": "a"}, {"path": "b"}], 2), ({"count": 4}, 4),
                                          ({"train": ["a"], "test": ["b", "c"]}, 3), (None, None)])
def test_bad_input_count_reads_the_shapes_summary_may_hold(value, count):
    assert bad_input_count(value) == count
