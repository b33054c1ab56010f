"""A run's calibration and threshold: fitted on its out-of-fold files into `calibration.json`, read back (and
checked) wherever the run predicts, and `raydf.calibrate RUN_DIR`, which refits a finished run from its files alone.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from raydf.config import Config
from raydf.data.face_store import is_face_manifest, read_manifest
from raydf.inference.calibration import (
    CALIBRATION_FILE,
    NONE,
    Calibration,
    EnsembleSpread,
    OofData,
    calibration_json,
    fit_calibration,
    models_logit,
    parse_calibration,
    run_fingerprint,
)
from raydf.runs.run_dir import data_specs, read_csv, write_csv
from raydf.runs.storage import RunStorage
from raydf.runs.submission import _confident_means
from raydf.training.metrics import classification_metrics

log = logging.getLogger(__name__)

OOF_BLENDED = "oof_blended.csv"  # data.synthetic_fakes=only: P(fake) of the validation reals' self-blended fakes
TEST_MODELS = "test_models.csv"  # each model's P(fake) of every readable test image or face: what calibrate reapplies
CALIBRATED = "prob_fake_calibrated"  # the column oof.csv / oof_sources.csv get: the calibrated OOF P(fake)


def fingerprint(metas: Sequence[dict]) -> str:
    """What ties calibration.json to its run: a hash of the models' out-of-fold predictions (checkpoint metadata)."""
    return run_fingerprint([np.asarray(m["val_prob_fake"], dtype=np.float64) for m in metas])


def read_calibration(storage: RunStorage, metas: Sequence[dict]) -> Calibration:
    """The run's calibration.json checked against its checkpoints' metadata; a run without one (made before
    calibration existed) predicts as it always did: the mean of the models' P(fake), cut at 0.5."""
    if not storage.exists(CALIBRATION_FILE):
        return NONE
    return parse_calibration(storage.read_text(CALIBRATION_FILE), fingerprint(metas), storage.path(CALIBRATION_FILE))


def _group_aggregate(codes: np.ndarray, how: str):
    """row P(fake) -> per group P(fake) by `how` (predict.aggregate), groups in code order."""
    counts = np.bincount(codes)
    if how == "mean":
        return lambda p: np.bincount(codes, p) / counts
    by = pd.Series(codes)
    if how == "median":
        return lambda p: pd.Series(p).groupby(by).median().to_numpy()
    return lambda p: _confident_means(by, pd.Series(p)).sort_index().to_numpy()


def oof_models(oof: pd.DataFrame) -> np.ndarray:
    """The out-of-fold P(fake) per model, (M, N): a multi-seed run's rows are each the ensemble of their fold's S
    models (oof.csv's `prob_fake_s{seed}`), pooled as the soft vote pools; else (1, N)."""
    per_seed = [c for c in oof.columns if c.startswith("prob_fake_s") and c[len("prob_fake_s") :].lstrip("-").isdigit()]
    return oof[per_seed].to_numpy().T if per_seed else oof["prob_fake"].to_numpy()[None]


def oof_data(cfg: Config, storage: RunStorage) -> OofData:
    """The run's out-of-fold data from oof.csv: per video/photo when it was trained on extracted faces (each face's
    source from the training manifest), else per image; with one class only, the self-blended validation fakes of
    data.synthetic_fakes=only (oof_blended.csv) beside the reals, when the run has them."""
    oof = read_csv(storage, "oof.csv").dropna(subset=["prob_fake"])
    members = oof_models(oof)
    z = models_logit(members)
    labels = oof["label"].to_numpy().astype(int)
    if len(np.unique(labels)) == 1 and storage.exists(OOF_BLENDED):
        blended = read_csv(storage, OOF_BLENDED)
        if len(blended):
            log.info(
                "calibration: the out-of-fold images hold one class only; fitting on them and the %d self-blended "
                "validation fakes (%s)",
                len(blended),
                OOF_BLENDED,
            )
            zb = models_logit(blended["prob_fake"].to_numpy()[None])
            return OofData(np.r_[z, zb], np.r_[labels, np.ones(len(zb), int)], level="image (with self-blended fakes)")
    train_spec = data_specs(cfg)[0]
    if is_face_manifest(train_spec):
        manifest, _ = read_manifest(train_spec)
        source = oof["path"].map(dict(zip(manifest["path"], manifest["source"])))
        codes, _ = pd.factorize(source)  # first appearance: oof_sources.csv's order
        return OofData(
            z, labels, codes, _group_aggregate(codes, cfg.predict.aggregate), level="video/photo", members=members
        )
    return OofData(z, labels, members=members)


def write_calibrated_oof(storage: RunStorage, cal: Calibration, data: OofData) -> None:
    """The calibrated OOF P(fake) beside the uncalibrated one (oof.csv, oof_sources.csv: `prob_fake_calibrated`)."""
    oof = read_csv(storage, "oof.csv")
    oof[CALIBRATED] = np.nan
    scored = oof["prob_fake"].notna().to_numpy()
    oof.loc[scored, CALIBRATED] = cal.prob(oof_models(oof[scored]))
    write_csv(storage, "oof.csv", oof)
    if data.groups is not None and storage.exists("oof_sources.csv"):
        sources = read_csv(storage, "oof_sources.csv")
        sources[CALIBRATED] = data.unit_prob(cal.prob(oof_models(oof[scored])))
        write_csv(storage, "oof_sources.csv", sources)


def fit_run_calibration(
    cfg: Config, storage: RunStorage, metas: Sequence[dict], fixed: Optional[Calibration] = None
) -> Calibration:
    """Fit predict.calibration and predict.threshold on the run's out-of-fold files; write calibration.json and the
    calibrated OOF P(fake) beside the uncalibrated one (oof.csv, oof_sources.csv: `prob_fake_calibrated`).
    `fixed`: a calibration to use instead of fitting one (the threshold is still chosen on the OOF data).

    With test_models.csv (the run predicted its test set) the models' disagreement there makes `temperature` fit
    the vote of all the run's models, not one model (`EnsembleSpread`; no test label is read)."""
    t0 = time.perf_counter()
    data = oof_data(cfg, storage)
    cal = fit_calibration(data, cfg.predict.calibration, cfg.predict.threshold, fixed, spread_on_test_set(storage))
    storage.write_text(CALIBRATION_FILE, calibration_json(cal, fingerprint(metas)))
    write_calibrated_oof(storage, cal, data)
    fit = cal.fit
    if cal.method == "temperature" and not cfg.data.test and fixed is None:
        log.info(
            "calibration: no test set, so no measure of how the models disagree: T is fitted on the out-of-fold rows "
            "(one model each), and may over-soften the vote of all the models (README: Calibrated probabilities)"
        )
    if "ensemble" in fit:
        e = fit["ensemble"]
        log.info(
            "calibration: the %d models' vote, simulated from their spread on %d test images (logit variance %.3f): "
            "T=%.3f (one model's rows alone: T=%.3f)",
            e["models"],
            e["spread_images"],
            e["member_var"],
            cal.temperature,
            e["temperature_one_row"],
        )
    log.info(
        "calibration %s%s on %d out-of-fold %ss: log loss %.4f -> %.4f, ECE %.4f -> %.4f; threshold %s = %.4f (%.2fs)",
        cal.method,
        f" (T={cal.temperature:.3f})" if cal.method == "temperature" else "",
        fit["units"],
        fit["level"],
        fit["oof_before"]["log_loss"],
        fit["oof_after"]["log_loss"],
        fit["oof_before"]["ece"],
        fit["oof_after"]["ece"],
        cal.threshold_mode,
        cal.threshold,
        time.perf_counter() - t0,
    )
    return cal


def spread_on_test_set(storage: RunStorage) -> Optional[EnsembleSpread]:
    """The run's models' disagreement on its test set (test_models.csv), or None without one."""
    if not storage.exists(TEST_MODELS):
        return None
    return EnsembleSpread.of(model_probs(read_csv(storage, TEST_MODELS)), source=TEST_MODELS)


def calibration_summary(cal: Calibration) -> dict:
    """summary.json's "calibration" and "threshold" parts."""
    out = {
        "calibration": {
            "method": cal.method,
            **({"temperature": cal.temperature} if cal.method == "temperature" else {}),
            **({"pool": cal.pool} if cal.method != "none" else {}),
            "fallback": cal.fallback,
            **{k: v for k, v in cal.fit.items() if k not in ("oof_accuracy_at_threshold", "oof_accuracy_at_0.5")},
        },
        "threshold": {
            "mode": cal.threshold_mode,
            "value": cal.threshold,
            "cv_accuracy": cal.fit.get("oof_accuracy_at_threshold"),
            "cv_accuracy_at_0.5": cal.fit.get("oof_accuracy_at_0.5"),
        },
    }
    return out


def write_test_models(storage: RunStorage, images: Sequence[str], pred: pd.DataFrame) -> None:
    """Each model's P(fake) of the readable test rows (the `prob_fold*` columns of the soft vote)."""
    cols = [c for c in pred.columns if c.startswith("prob_fold")]
    write_csv(storage, TEST_MODELS, pd.DataFrame({"image": list(images), **{c: pred[c].to_numpy() for c in cols}}))


def model_probs(frame: pd.DataFrame) -> np.ndarray:
    """(M, N) models' P(fake) from a frame with `prob_fold*` columns."""
    return frame[[c for c in frame.columns if c.startswith("prob_fold")]].to_numpy(np.float64).T


def calibrate_run(run_dir: str, overrides: Sequence[str] = (), fixed: Optional[Calibration] = None) -> Calibration:
    """`python -m raydf.calibrate`: fit (or refit) a finished run's calibration and threshold from its files alone,
    then rewrite its submission (from test_models.csv: no inference), summary.json and report. `fixed`: a
    calibration to apply instead of fitting one (e.g. a temperature chosen elsewhere)."""
    from raydf.pipelines.prediction import load_finished_run
    from raydf.pipelines.training import rewrite_test_outputs
    from raydf.runs.report import build_report

    t0 = time.perf_counter()
    cfg, checkpoints = load_finished_run(run_dir, overrides)
    storage = RunStorage(run_dir)
    metas = [meta for _, meta in checkpoints]
    cal = fit_run_calibration(cfg, storage, metas, fixed)
    summary = json.loads(storage.read_text("summary.json"))
    summary.update(calibration_summary(cal))
    # The out-of-fold metrics again (a run made before ECE and Brier were reported gets them; the values are the same)
    oof = read_csv(storage, "oof.csv").dropna(subset=["prob_fake"])
    summary["cv"] = classification_metrics(oof["label"], oof["prob_fake"])
    if "cv_sources" in summary and storage.exists("oof_sources.csv"):
        sources = read_csv(storage, "oof_sources.csv")
        summary["cv_sources"] = dict(classification_metrics(sources["label"], sources["prob_fake"]), n=len(sources))
    if storage.exists(TEST_MODELS):
        summary.update(rewrite_test_outputs(cfg, storage, cal))
    elif cfg.data.test:
        log.warning(
            "%s has no %s (made before calibration existed): submission.csv is left as it was; predict the test set "
            "again with python -m raydf.predict --run %s --images %s",
            run_dir,
            TEST_MODELS,
            run_dir,
            cfg.data.test,
        )
    summary.setdefault("timings", {})["calibration_seconds"] = time.perf_counter() - t0
    storage.write_text("summary.json", json.dumps(summary, indent=2))
    _record_in_config(storage, cfg)
    if storage.local:
        build_report(storage.local_path())
    return cal


def _record_in_config(storage: RunStorage, cfg: Config) -> None:
    """config.yaml keeps what the calibration was fitted with (predict.calibration, predict.threshold), nothing else
    changed."""
    import yaml

    saved = yaml.safe_load(storage.read_text("config.yaml")) or {}
    saved.setdefault("predict", {}).update(calibration=cfg.predict.calibration, threshold=cfg.predict.threshold)
    storage.write_text("config.yaml", yaml.safe_dump(saved, sort_keys=False))
