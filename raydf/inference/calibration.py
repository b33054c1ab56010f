"""Calibrated P(fake) and the decision threshold, fitted on a run's out-of-fold predictions (plain numpy, scipy,
scikit-learn; no Ray).

The soft vote of a calibrated run is `Calibration.prob`: the models' logits are averaged (the mean of the folds'
logits), then divided by a temperature (`temperature`) or mapped through an isotonic fit (`isotonic`); `none` keeps
the mean of the models' probabilities, exactly what raydf computed before calibration existed. Everything works on
"the list of models' probabilities" (M, N): M = K folds today, K x S with several seeds.

A run's `calibration.json` holds the method, its parameters, the threshold and the out-of-fold log loss and ECE
before and after; `run` ties it to its run (a hash of the models' out-of-fold predictions), `checksum` to its own
contents, so a file edited by hand or copied from another run is refused, by name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_curve

from raydf.errors import ConfigError
from raydf.training.metrics import expected_calibration_error, log_loss_of

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
METHODS = ("none", "temperature", "isotonic")
MIN_ROWS = 20  # fewer out-of-fold rows: no fit (a temperature from 10 rows is noise)
T_RANGE = (0.05, 20.0)  # a fitted temperature outside: the models' scores carry no usable signal, or a bug
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before their logit (a softmax can round to 1.0)


def models_logit(model_probs: np.ndarray) -> np.ndarray:
    """The mean over models of each model's logit of P(fake): (M, N) -> (N,). For a 2-class softmax the logit of
    P(fake) is the difference of the two class logits, so this is the mean of the folds' logits."""
    p = np.clip(np.asarray(model_probs, dtype=np.float64), EPS, 1 - EPS)
    return np.mean(np.log(p) - np.log1p(-p), axis=0)


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: how the models' probabilities become the run's P(fake), and where `label` cuts it."""

    method: str = "none"
    temperature: float = 1.0  # `temperature`: P = sigmoid(mean logit / T)
    iso_x: tuple[float, ...] = ()  # `isotonic`: P = interp(sigmoid(mean logit), iso_x, iso_y), clipped at the ends
    iso_y: tuple[float, ...] = ()
    threshold: float = 0.5  # label = P(fake) > threshold
    threshold_mode: str = "0.5"
    fallback: Optional[str] = None  # why the asked-for method was not used (then method is none)
    fit: dict = field(default_factory=dict)  # asked method, level, rows, OOF log loss/ECE before and after, seconds

    def prob(self, model_probs: np.ndarray) -> np.ndarray:
        """The soft vote of the models' P(fake) (M, N) -> (N,), calibrated."""
        model_probs = np.asarray(model_probs, dtype=np.float64)
        if self.method == "none":
            return model_probs.mean(axis=0)  # as before calibration existed: the mean of the fold softmaxes
        return self.from_logit(models_logit(model_probs))

    def from_logit(self, z: np.ndarray) -> np.ndarray:
        """Calibrated P(fake) of ensemble logits `z` (the mean of the models' logits)."""
        z = np.asarray(z, dtype=np.float64)
        if self.method == "temperature":
            return expit(z / self.temperature)
        if self.method == "isotonic":
            return np.interp(expit(z), self.iso_x, self.iso_y)
        return expit(z)

    def label(self, prob: np.ndarray) -> np.ndarray:
        return (np.asarray(prob) > self.threshold).astype(int)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["iso_x"], d["iso_y"] = list(self.iso_x), list(self.iso_y)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        d = dict(d)
        d["iso_x"], d["iso_y"] = tuple(d.get("iso_x", ())), tuple(d.get("iso_y", ()))
        return cls(**d)


NONE = Calibration()  # an old run without calibration.json: the plain mean of the models' probabilities, cut at 0.5


def run_fingerprint(val_probs: Sequence[np.ndarray]) -> str:
    """A hash of the models' out-of-fold predictions (each checkpoint's `val_prob_fake`, in model order): what ties
    a calibration to the run whose OOF data it was fitted on."""
    h = hashlib.sha256()
    for p in val_probs:
        h.update(np.asarray(p, dtype=np.float64).round(7).tobytes())
    return h.hexdigest()[:16]


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def calibration_json(calibration: Calibration, fingerprint: str) -> str:
    body = dict(calibration.to_dict(), run=fingerprint)
    return json.dumps(dict(body, checksum=_checksum(body)), indent=2)


def parse_calibration(text: str, fingerprint: str, where: str) -> Calibration:
    """The calibration in `text` (a calibration.json read from `where`), refused with a ConfigError naming `where`
    when it was edited by hand or belongs to another run."""
    try:
        d = json.loads(text)
        checksum = d.pop("checksum")
        run = d.pop("run")
    except (ValueError, KeyError, AttributeError) as e:
        raise ConfigError(
            f"{where}: not a raydf calibration file ({e}); rewrite it with python -m raydf.calibrate"
        ) from None
    if _checksum(dict(d, run=run)) != checksum:
        raise ConfigError(
            f"{where} was edited by hand (its checksum does not match its contents): refit it with "
            f"python -m raydf.calibrate RUN_DIR, or delete it to predict uncalibrated"
        )
    if run != fingerprint:
        raise ConfigError(
            f"{where} belongs to another run (fitted on other out-of-fold predictions than this run's checkpoints): "
            f"refit it with python -m raydf.calibrate RUN_DIR, or delete it to predict uncalibrated"
        )
    try:
        return Calibration.from_dict(d)
    except TypeError as e:
        raise ConfigError(
            f"{where}: not a raydf calibration file ({e}); rewrite it with python -m raydf.calibrate"
        ) from None


# --- fitting ---------------------------------------------------------------------------------------------------


@dataclass
class OofData:
    """What a calibration is fitted on: per row the models' logit mean `z` and the label; with faces, each row's
    group (its video/photo) and how a group's P(fake) is made from its rows' (`aggregate`)."""

    z: np.ndarray
    labels: np.ndarray
    groups: Optional[np.ndarray] = None  # integer codes 0..G-1 per row, or None: every row is its own unit
    aggregate: Optional[Callable[[np.ndarray], np.ndarray]] = None  # row P(fake) -> group P(fake), in code order
    level: str = "image"

    def unit_labels(self) -> np.ndarray:
        if self.groups is None:
            return self.labels
        out = np.zeros(self.groups.max() + 1)
        out[self.groups] = self.labels
        return out

    def unit_prob(self, row_prob: np.ndarray) -> np.ndarray:
        return row_prob if self.groups is None else self.aggregate(row_prob)

    def weights(self) -> Optional[np.ndarray]:
        """Per-row weights that make every video/photo count once (None: every row counts once)."""
        if self.groups is None:
            return None
        return 1.0 / np.bincount(self.groups)[self.groups]


def fit_calibration(
    data: OofData, method: str, threshold: str = "0.5", fixed: Optional[Calibration] = None
) -> Calibration:
    """Fit `method` on the out-of-fold data and choose `threshold` on the calibrated result (`choose_threshold`).
    `fixed`: a calibration to use instead of fitting one (its threshold is still chosen here, and it is scored).

    Falls back to `none`, with a warning that names why, for out-of-fold data with one class, fewer than
    MIN_ROWS rows or video/photos, or a fitted temperature outside T_RANGE.
    """
    import time

    t0 = time.perf_counter()
    y = data.unit_labels().astype(int)
    before = data.unit_prob(expit(data.z))
    fallback = None
    fitted = NONE
    if fixed is not None:
        method, fitted = fixed.method, fixed
    elif method != "none":
        if len(y) < MIN_ROWS:
            fallback = f"only {len(y)} out-of-fold {data.level}s (at least {MIN_ROWS} are needed)"
        elif len(np.unique(y)) < 2:
            fallback = f"the out-of-fold {data.level}s hold one class only (label {int(y[0])})"
        elif method == "temperature":
            t = fit_temperature(data)
            if not T_RANGE[0] < t < T_RANGE[1]:
                fallback = (
                    f"the fitted temperature {t:.4g} is outside {T_RANGE}: the out-of-fold scores carry next to no "
                    f"signal (an untrained or diverged model?)"
                )
            else:
                fitted = Calibration("temperature", temperature=float(t))
        elif method == "isotonic":
            fitted = fit_isotonic(data)
        else:
            raise ConfigError(f"predict.calibration must be one of {', '.join(METHODS)} (got '{method}')")
    if fallback:
        log.warning("predict.calibration=%s: not fitted, %s; predicting uncalibrated (none)", method, fallback)
    after = before if fitted.method == "none" else data.unit_prob(fitted.from_logit(data.z))
    cut = choose_threshold(y, after, threshold)
    fit = {
        "asked": method,
        "level": data.level,
        "rows": int(len(data.z)),
        "units": int(len(y)),
        "oof_before": {"log_loss": log_loss_of(y, before), "ece": expected_calibration_error(y, before)},
        "oof_after": {"log_loss": log_loss_of(y, after), "ece": expected_calibration_error(y, after)},
        "oof_accuracy_at_threshold": float(((after > cut).astype(int) == y).mean()),
        "oof_accuracy_at_0.5": float(((after > 0.5).astype(int) == y).mean()),
    }
    fit["seconds"] = time.perf_counter() - t0
    return Calibration(
        fitted.method,
        fitted.temperature,
        fitted.iso_x,
        fitted.iso_y,
        threshold=float(cut),
        threshold_mode=threshold,
        fallback=fallback,
        fit=fit,
    )


def fit_temperature(data: OofData) -> float:
    """The temperature T minimising the out-of-fold log loss of sigmoid(z / T) (per video/photo after aggregating
    its faces when the data has groups): scipy's bounded scalar search over log T in [1e-3, 1e3]."""
    y = data.unit_labels()

    def loss(log_t: float) -> float:
        return log_loss_of(y, data.unit_prob(expit(data.z / math.exp(log_t))))

    res = minimize_scalar(loss, bounds=(math.log(1e-3), math.log(1e3)), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(res.x))


def fit_isotonic(data: OofData) -> Calibration:
    """scikit-learn's IsotonicRegression of the label on sigmoid(z) (each video/photo weighing one when the data has
    groups: its faces share its label), kept as its interpolation table."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(expit(data.z), data.labels.astype(float), sample_weight=data.weights())
    return Calibration(
        "isotonic", iso_x=tuple(map(float, iso.X_thresholds_)), iso_y=tuple(map(float, iso.y_thresholds_))
    )


def choose_threshold(labels: np.ndarray, prob: np.ndarray, mode: str) -> float:
    """The cut of P(fake) that `label` uses (label = P > cut), chosen on the out-of-fold ROC:

    - `0.5`: 0.5.
    - `eer`: the ROC point where the false-positive and false-negative rates are closest (the equal error rate).
    - `youden`: the point maximising TPR - FPR (Youden's J).
    - `fpr@X`: the point with the highest TPR among those with FPR <= X.

    The point's scores (>= its ROC threshold) are exactly those above the returned cut: the cut lies halfway to the
    next lower score.
    """
    if mode == "0.5":
        return 0.5
    labels, prob = np.asarray(labels).astype(int), np.asarray(prob, dtype=np.float64)
    if len(np.unique(labels)) < 2:
        log.warning("predict.threshold=%s: the out-of-fold data hold one class only; using 0.5", mode)
        return 0.5
    fpr, tpr, thr = roc_curve(labels, prob, drop_intermediate=False)
    if mode == "eer":
        i = int(np.argmin(np.abs((1 - tpr) - fpr)))
    elif mode == "youden":
        i = int(np.argmax(tpr - fpr))
    elif mode.startswith("fpr@"):
        ok = np.flatnonzero(fpr <= float(mode[4:]))
        i = int(ok[np.argmax(tpr[ok])])
    else:
        raise ConfigError(f"predict.threshold must be 0.5, eer, youden or fpr@X (got '{mode}')")
    if i == 0:  # (0, 0): nothing is called fake
        return float(min(1.0, thr[1]) if len(thr) > 1 else 1.0)
    lower = thr[i + 1] if i + 1 < len(thr) else thr[i] - 1e-9
    return float((thr[i] + lower) / 2)
