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
    # Applied to the models' probabilities: with no measure of the models' spread, sigmoid of the mean of their logits
    # over T (P clipped to [1e-7, 1 - 1e-7]: a float32 softmax rounds to 1.0 from logit 17 on).
    assert cal.pool == "mean_logit"
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(cal.prob(probs), expit(logit(clipped).mean(0) / cal.temperature), atol=1e-12)
    # A vote of probabilities (a fit with the spread): T = 1 is the uncalibrated vote, the plain mean
    vote = np.clip(probs.mean(0), 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(Calibration("temperature", temperature=1.0).prob(probs), vote, atol=1e-12)
    assert (
        classification_metrics(labels, cal.prob(probs))["log_loss"]
        < classification_metrics(labels, probs.mean(0))["log_loss"]
    )


def _gaussian_run(n: int, models: int, seed: int, mu: float = 2.0, tau2: float = 2.0, noise: float = 4.0):
    """The logits of a K-fold run under the Gaussian model: an image's signal s (mean +-mu by class, variance tau2)
    plus each model's own noise (variance `noise`). Out-of-fold rows see one model, (1, n); the test set all of
    them, (models, n). The true P(fake | logits) is not a sigmoid of any pooled logit: the test labels decide."""
    rng = np.random.default_rng(seed)

    def draw(k: int):
        y = rng.integers(0, 2, n)
        s = np.where(y == 1, mu, -mu) + np.sqrt(tau2) * rng.standard_normal(n)
        return expit(s[None] + np.sqrt(noise) * rng.standard_normal((k, n))), y

    return draw(1), draw(models)


def test_a_temperature_fitted_to_the_whole_vote_from_the_models_spread_on_unlabelled_images():
    """One model's out-of-fold rows ask for a higher temperature than the vote of four needs (averaging removes
    most of each model's noise). Given the four models' spread on the test images (no label read), the fit
    simulates their vote for every out-of-fold row and lands on the temperature the test labels prefer."""
    from scipy.optimize import minimize_scalar

    from raydf.inference.calibration import EnsembleSpread

    (oof_probs, oof_labels), (test_probs, test_labels) = _gaussian_run(4000, models=4, seed=6)
    data = OofData(models_logit(oof_probs), oof_labels)
    spread = EnsembleSpread.of(test_probs)
    assert spread.models == 4 and spread.member_var == pytest.approx(4.0, rel=0.05)

    def test_loss(t: float) -> float:
        return classification_metrics(test_labels, expit(models_logit(test_probs) / t))["log_loss"]

    best = minimize_scalar(test_loss, bounds=(0.05, 20), method="bounded").x  # what the test labels prefer
    one = fit_calibration(data, "temperature")
    vote = fit_calibration(data, "temperature", spread=spread)
    assert "ensemble" not in one.fit and vote.fit["ensemble"]["temperature_one_row"] == pytest.approx(one.temperature)
    assert one.temperature > 1.3 * best  # one model's temperature over-softens the vote
    # Within the scatter of a 4,000-image fit (seeds 6-8: 9-11% from `best`), and as good on the test labels
    assert vote.temperature == pytest.approx(best, rel=0.15)
    assert test_loss(vote.temperature) < test_loss(best) + 0.005 < test_loss(one.temperature)
    # The same files, the same temperature (the simulation is seeded); a vote of one model needs no simulation.
    assert fit_calibration(data, "temperature", spread=spread).temperature == vote.temperature
    alone = fit_calibration(data, "temperature", spread=EnsembleSpread.of(test_probs[:1].repeat(2, 0)))
    assert alone.temperature == pytest.approx(one.temperature, rel=0.05)


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


def test_a_calibration_file_written_before_the_pool_was_recorded_pools_logits_as_it_did():
    cal = Calibration("temperature", temperature=2.0)
    old = json.loads(calibration_json(cal, "run-a"))
    del old["pool"], old["checksum"]  # what a file of 2026-12-04 holds
    old.pop("run")
    text = calibration_json(Calibration.from_dict(old), "run-a")
    assert json.loads(text)["pool"] == "mean_logit"
    read = parse_calibration(text, "run-a", "calibration.json")
    probs = np.array([[0.9, 0.2], [0.6, 0.7]])
    np.testing.assert_allclose(read.prob(probs), expit(logit(probs).mean(0) / 2.0), atol=1e-12)
    assert not np.allclose(cal.prob(probs), read.prob(probs))  # the new pool differs on these


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


def test_a_run_fits_its_vote_once_its_test_set_is_predicted(tmp_path):
    """fit_run_calibration (the run, raydf.calibrate): from oof.csv alone T is one model's; with test_models.csv
    (the models' P(fake) of the test images) it is the vote's, recorded in calibration.json with the spread."""
    import pandas as pd

    from raydf.config import load_config
    from raydf.pipelines.calibration import TEST_MODELS, fit_run_calibration, read_calibration
    from raydf.runs.storage import RunStorage

    (oof_probs, oof_labels), (test_probs, _) = _gaussian_run(2000, models=4, seed=9)
    n = len(oof_labels)
    pd.DataFrame(
        {
            "path": [f"i{i}.png" for i in range(n)],
            "label": oof_labels,
            "fold": np.arange(n) % 4,
            "prob_fake": oof_probs[0],
        }
    ).to_csv(tmp_path / "oof.csv", index=False)
    cfg = load_config(None, [f"data.train={tmp_path / 'train.csv'}", "predict.calibration=temperature"])
    storage, metas = RunStorage(tmp_path), [{"val_prob_fake": oof_probs[0][np.arange(n) % 4 == k]} for k in range(4)]
    one = fit_run_calibration(cfg, storage, metas)
    assert "ensemble" not in one.fit
    models = {f"prob_fold{k}": test_probs[k] for k in range(4)}
    pd.DataFrame({"image": [f"t{i}.png" for i in range(n)], **models}).to_csv(tmp_path / TEST_MODELS, index=False)
    vote = fit_run_calibration(cfg, storage, metas)
    assert vote.fit["ensemble"]["models"] == 4 and vote.fit["ensemble"]["spread_images"] == n
    assert vote.temperature < one.temperature / 1.3 and vote.fit["ensemble"]["temperature_one_row"] == one.temperature
    assert read_calibration(storage, metas) == vote  # what predict, evaluate and serve will use
    assert (one.pool, vote.pool) == ("mean_logit", "mean_prob")
