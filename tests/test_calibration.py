"""Calibration and the decision threshold (raydf.inference.calibration): pure unit tests, no Ray, no training."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy.special import expit, logit

from raydf.errors import ConfigError
from raydf.inference.calibration import (
    NONE,
    Calibration,
    OofData,
    calibration_json,
    choose_threshold,
    fit_calibration,
    models_logit,
    parse_calibration,
)
from raydf.training.metrics import bootstrap_metrics, classification_metrics, expected_calibration_error


def _overconfident_ensemble(n: int = 4000, models: int = 3, sharpen: float = 5.0, seed: int = 0):
    """(M, N) models' P(fake) whose logits are `sharpen` x the true ones (each model with a little noise of its own),
    and labels drawn from the true probabilities."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < expit(true_logit)).astype(int)
    probs = expit(sharpen * (true_logit[None] + rng.normal(0, 0.05, (models, n))))
    return probs, labels


def test_temperature_recovers_an_overconfident_ensembles_factor_and_lowers_its_log_loss():
    probs, labels = _overconfident_ensemble()
    cal = fit_calibration(OofData(models_logit(probs), labels), "temperature")
    assert cal.method == "temperature" and cal.fallback is None
    assert cal.temperature == pytest.approx(5.0, rel=0.1)
    before, after = cal.fit["oof_before"], cal.fit["oof_after"]
    assert after["log_loss"] < before["log_loss"] - 0.1 and after["ece"] < before["ece"] / 3
    # Applied to the models' probabilities: sigmoid of the mean of their logits over T (P clipped to [1e-7, 1 - 1e-7]:
    # a float32 softmax rounds to 1.0 from logit 17 on).
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(cal.prob(probs), expit(logit(clipped).mean(0) / cal.temperature), atol=1e-12)
    assert (
        classification_metrics(labels, cal.prob(probs))["log_loss"]
        < classification_metrics(labels, probs.mean(0))["log_loss"]
    )


def test_isotonic_fit_is_monotone_and_stays_in_0_1():
    probs, labels = _overconfident_ensemble(models=1, seed=1)
    cal = fit_calibration(OofData(models_logit(probs), labels), "isotonic")
    assert cal.method == "isotonic" and np.all(np.diff(cal.iso_y) >= 0) and np.all(np.diff(cal.iso_x) > 0)
    grid = np.linspace(1e-6, 1 - 1e-6, 2001)[None]  # includes scores beyond the fitted range: clipped
    out = cal.prob(grid)
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    assert cal.fit["oof_after"]["ece"] < cal.fit["oof_before"]["ece"]


# A known ROC (5 reals, 5 fakes). Sorted by score: .9F .8F .75R .65F .6F .5F .4R .3R .2R .1R, so the ROC points
# (FPR, TPR) are (0, .2) (0, .4) (.2, .4) (.2, .6) (.2, .8) (.2, 1) (.4, 1) ...
ROC_LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
ROC_SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.75, 0.5, 0.6, 0.65, 0.8, 0.9])


@pytest.mark.parametrize(
    "mode, cut, tpr, fpr",
    [
        ("0.5", 0.5, 0.8, 0.2),  # the plain cut
        ("eer", 0.55, 0.8, 0.2),  # FNR = FPR = 0.2 at the score 0.6: halfway to the next lower score, 0.5
        ("youden", 0.45, 1.0, 0.2),  # TPR - FPR = 0.8, its only maximum, at 0.5
        ("fpr@0.1", 0.775, 0.4, 0.0),  # the best TPR with no false positive: down to 0.8, above the real at 0.75
    ],
)
def test_threshold_modes_pick_the_documented_points_of_a_known_roc(mode, cut, tpr, fpr):
    got = choose_threshold(ROC_LABELS, ROC_SCORES, mode)
    assert got == pytest.approx(cut)
    called = ROC_SCORES > got
    assert called[ROC_LABELS == 1].mean() == pytest.approx(tpr) and called[ROC_LABELS == 0].mean() == pytest.approx(fpr)


def test_ece_and_brier_beside_the_other_metrics_with_bootstrap_intervals():
    m = classification_metrics(np.array([0, 1]), np.array([0.2, 0.9]))
    assert m["ece"] == pytest.approx((0.2 + 0.1) / 2) and m["brier"] == pytest.approx((0.04 + 0.01) / 2)
    probs, labels = _overconfident_ensemble(n=500, models=1, seed=2)
    p = probs[0]
    boot = bootstrap_metrics(labels, p, n=50)
    for key in ("ece", "brier"):
        low, high = boot[key]["ci95"]
        assert low <= boot[key]["value"] <= high and high > low
    assert boot["ece"]["value"] == pytest.approx(expected_calibration_error(labels, np.clip(p, 1e-7, 1 - 1e-7)))


def test_fallbacks_to_none_name_why(caplog):
    probs, labels = _overconfident_ensemble(n=200, models=1, seed=3)
    z = models_logit(probs)
    with caplog.at_level(logging.WARNING):
        few = fit_calibration(OofData(z[:19], labels[:19]), "temperature")
        one = fit_calibration(OofData(z[labels == 1], labels[labels == 1]), "isotonic")
        # Scores with no signal: the best temperature flattens them to a constant (T -> the search's bound).
        noise = fit_calibration(OofData(np.random.default_rng(0).normal(0, 1e-4, 200), labels), "temperature")
    assert few.method == one.method == noise.method == "none"
    assert "only 19 out-of-fold images" in few.fallback and "one class only" in one.fallback
    assert "outside (0.05, 20.0)" in noise.fallback
    assert [r.getMessage().count("predicting uncalibrated") for r in caplog.records] == [1, 1, 1]
    np.testing.assert_array_equal(few.prob(probs[:, :5]), probs[:, :5].mean(0))  # none: the plain mean, as before


def test_a_calibration_file_edited_by_hand_or_of_another_run_is_refused_naming_it():
    cal = Calibration("temperature", temperature=2.0, threshold=0.4, threshold_mode="eer")
    text = calibration_json(cal, "run-a")
    assert parse_calibration(text, "run-a", "runs/a/calibration.json") == cal
    with pytest.raises(ConfigError, match=r"runs/b/calibration.json belongs to another run"):
        parse_calibration(text, "run-b", "runs/b/calibration.json")
    edited = json.loads(text)
    edited["temperature"] = 1.0
    with pytest.raises(ConfigError, match=r"runs/a/calibration.json was edited by hand"):
        parse_calibration(json.dumps(edited), "run-a", "runs/a/calibration.json")
    assert NONE.method == "none" and NONE.threshold == 0.5


def test_with_faces_the_temperature_is_fitted_per_video_after_aggregating_its_faces():
    """Faces of one video share its label: the fit scores each video once, by the mean of its faces' calibrated
    P(fake) (predict.aggregate), and finds an over-confident ensemble's factor there too."""
    probs, labels = _overconfident_ensemble(n=600, models=1, seed=4)
    faces = 8
    rng = np.random.default_rng(5)
    face_probs = expit(logit(probs[0]).repeat(faces) + rng.normal(0, 0.05, 600 * faces))[None]
    codes = np.arange(600).repeat(faces)
    counts = np.bincount(codes)
    data = OofData(models_logit(face_probs), labels.repeat(faces), codes, lambda p: np.bincount(codes, p) / counts)
    cal = fit_calibration(data, "temperature")
    assert cal.fit["units"] == 600 and cal.fit["rows"] == 4800
    assert cal.temperature == pytest.approx(5.0, rel=0.2) and cal.fit["oof_after"]["ece"] < cal.fit["oof_before"]["ece"]


def test_out_of_fold_data_with_one_class_use_the_runs_self_blended_fakes(tmp_path):
    """data.synthetic_fakes=only on reals alone: oof.csv holds one class; the validation reals' self-blended fakes
    (oof_blended.csv) are the other."""
    import pandas as pd

    from raydf.config import load_config
    from raydf.pipelines.calibration import oof_data
    from raydf.runs.storage import RunStorage

    rng = np.random.default_rng(6)
    pd.DataFrame(
        {"path": [f"r{i}.png" for i in range(40)], "label": 0, "fold": 0, "prob_fake": rng.random(40) / 2}
    ).to_csv(tmp_path / "oof.csv", index=False)
    cfg = load_config(None, [f"data.train={tmp_path / 'train.csv'}"])
    assert oof_data(cfg, RunStorage(tmp_path)).level == "image"  # no blended rows: one class, and the fit falls back
    pd.DataFrame(
        {"path": [f"r{i}.png" for i in range(40)], "label": 1, "fold": 0, "prob_fake": 0.5 + rng.random(40) / 2}
    ).to_csv(tmp_path / "oof_blended.csv", index=False)
    data = oof_data(cfg, RunStorage(tmp_path))
    assert data.level == "image (with self-blended fakes)" and sorted(set(data.labels)) == [0, 1] and len(data.z) == 80
    assert fit_calibration(data, "isotonic").method == "isotonic"
