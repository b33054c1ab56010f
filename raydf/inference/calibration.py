"""Calibrated P(fake) and the decision threshold, fitted on a run's out-of-fold predictions (plain numpy, scipy,
scikit-learn; no Ray).

The soft vote of a calibrated run is `Calibration.prob`: the models' P(fake) pooled into one logit (`pool`: the
logit of the mean of their probabilities, or the mean of their logits), divided by a temperature (`temperature`) or
mapped through an isotonic fit (`isotonic`); `none` is the mean of the probabilities, exactly what raydf computed
before calibration existed. Everything works on "the list of models' probabilities" (M, N): M = K folds, K x S
with several seeds. (The mean of probabilities scored better on the shared set's test images at every temperature:
benchmarks/README.md, "Calibration". Files fitted before 2026-12-05 record no pool: they pooled logits, and
predict as they did.)

A model's out-of-fold rows show one model (or a fold's S seeds), but the run predicts with the vote of all M: a
vote is less noisy than one model, so the temperature that calibrates one model over-softens the vote (T = 1.83 for
one model, 1.09 best for the 2-model vote on the shared set). `temperature` is therefore fitted on simulated votes
when the spread of the models' logits on images they all predict out of sample is known (the run's test set, no
label used): `EnsembleSpread`, `simulated_votes`; without it, on the rows as they are, for the mean of logits.

A run's `calibration.json` holds the method, its parameters, the threshold and the out-of-fold log loss and ECE
before and after; `run` ties it to its run (a hash of the models' out-of-fold predictions), `checksum` to its own
contents, so a file edited by hand or copied from another run is refused, by name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.special import expit

from raydf.errors import ConfigError
from raydf.training.metrics import expected_calibration_error, log_loss_of

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
METHODS = ("none", "temperature", "isotonic")
MIN_ROWS = 20  # fewer out-of-fold rows: no fit (a temperature from 10 rows is noise)
T_RANGE = (0.05, 20.0)  # a fitted temperature outside: the models' scores carry no usable signal, or a bug
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before their logit (a softmax can round to 1.0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def models_logit(model_probs: np.ndarray, pool: str = "mean_prob") -> np.ndarray:
    """The vote's logit, (M, N) models' P(fake) -> (N,): the logit of the mean of their probabilities (`mean_prob`),
    or the mean of their logits (`mean_logit`: for a 2-class softmax, the mean of the difference of the two class
    logits; what calibration files made before 2026-12-05 used)."""
    p = np.asarray(model_probs, dtype=np.float64)
    if pool == "mean_logit":
        return np.mean(_logit(p), axis=0)
    return _logit(p.mean(axis=0))


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: how the models' probabilities become the run's P(fake), and where `label` cuts it."""

    method: str = "none"
    temperature: float = 1.0  # `temperature`: P = sigmoid(vote logit / T)
    iso_x: tuple[float, ...] = ()  # `isotonic`: P = interp(sigmoid(vote logit), iso_x, iso_y), clipped at the ends
    iso_y: tuple[float, ...] = ()
    threshold: float = 0.5  # label = P(fake) > threshold
    threshold_mode: str = "0.5"
    fallback: Optional[str] = None  # why the asked-for method was not used (then method is none)
    fit: dict = field(default_factory=dict)  # asked method, level, rows, OOF log loss/ECE before and after, seconds
    pool: str = "mean_prob"  # how the models' P(fake) are pooled into the vote's logit (models_logit)

    def prob(self, model_probs: np.ndarray) -> np.ndarray:
        """The soft vote of the models' P(fake) (M, N) -> (N,), calibrated."""
        model_probs = np.asarray(model_probs, dtype=np.float64)
        if self.method == "none":
            return model_probs.mean(axis=0)  # as before calibration existed: the mean of the fold softmaxes
        return self.from_logit(models_logit(model_probs, self.pool))

    def from_logit(self, z: np.ndarray) -> np.ndarray:
        """Calibrated P(fake) of vote logits `z` (`models_logit` with this calibration's pool)."""
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
        d.setdefault("pool", "mean_logit")  # a file written before the pool was recorded: what it was fitted with
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
    members: Optional[np.ndarray] = None  # (S, N) P(fake) of the S models behind each row (a fold's seeds); None: one

    def pooled(self, pool: str) -> np.ndarray:
        """The rows' vote logits as `pool` pools their S models (`z` is the mean of probabilities)."""
        return self.z if self.members is None or pool == "mean_prob" else models_logit(self.members, pool)

    def member_logits(self) -> np.ndarray:
        """(S, N) logits of the models behind each row."""
        return self.z[None] if self.members is None else _logit(np.asarray(self.members, dtype=np.float64))

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


@dataclass(frozen=True)
class EnsembleSpread:
    """How much the run's M models disagree where none of them trained: the mean over images of the variance of
    their logits (an unbiased per-image variance over the M models), measured on `images` unlabelled images."""

    member_var: float
    models: int
    images: int
    source: str = "test set"

    @classmethod
    def of(cls, model_probs: np.ndarray, source: str = "test set") -> Optional[EnsembleSpread]:
        """From (M, N) models' P(fake); None with one model or fewer than MIN_ROWS images (no estimate)."""
        z = _logit(np.asarray(model_probs, dtype=np.float64))
        if z.shape[0] < 2 or z.shape[1] < MIN_ROWS:
            return None
        return cls(float(z.var(axis=0, ddof=1).mean()), int(z.shape[0]), int(z.shape[1]), source)


SIM_REPLICATES = 20  # simulated votes per out-of-fold row: the fitted T moves by < 0.01 between seeds at 1,760 rows


def simulated_votes(data: OofData, spread: EnsembleSpread, replicates: int = SIM_REPLICATES) -> np.ndarray:
    """(R, N) logits of the M-model vote each out-of-fold row would have had, simulated from its S real models.

    The Gaussian model of the models' logits: z_m = s + e_m, the image's signal s (class-conditional normal, mean
    mu_y, variance tau2) and each model's own noise e_m ~ N(0, spread.member_var). A row's S observed logits fix
    s up to its posterior (normal); the M - S models it lacks are drawn around a draw of s, and the vote pools
    all M (mean of probabilities). tau2 is the rows' within-class variance less the noise of their S-model mean
    (at least 5% of it: a test set far noisier than the out-of-fold data would make it negative). Seeded: the
    same files give the same temperature.
    """
    rng = np.random.default_rng(0)
    observed = data.member_logits()  # (S, N)
    s_count, n = observed.shape
    missing = max(spread.models - s_count, 0)
    row = observed.mean(axis=0)
    y = data.labels.astype(int)
    mu = np.where(y == 1, row[y == 1].mean(), row[y == 0].mean())
    within = float(np.mean([row[y == c].var() for c in (0, 1)]))
    noise = spread.member_var / s_count  # of the S-model mean
    tau2 = max(within - noise, 0.05 * within)
    gain = tau2 / (tau2 + noise)
    post_mean, post_sd = mu + gain * (row - mu), math.sqrt(gain * noise)
    votes = np.empty((replicates, n))
    for r in range(replicates):
        signal = post_mean + post_sd * rng.standard_normal(n)
        drawn = signal[None] + math.sqrt(spread.member_var) * rng.standard_normal((missing, n))
        votes[r] = _logit(expit(np.concatenate([observed, drawn])).mean(axis=0))
    return votes


def fit_calibration(
    data: OofData,
    method: str,
    threshold: str = "0.5",
    fixed: Optional[Calibration] = None,
    spread: Optional[EnsembleSpread] = None,
) -> Calibration:
    """Fit `method` on the out-of-fold data and choose `threshold` on the calibrated result (`choose_threshold`).
    `fixed`: a calibration to use instead of fitting one (its threshold is still chosen here, and it is scored).

    Falls back to `none`, with a warning that names why, for out-of-fold data with one class, fewer than
    MIN_ROWS rows or video/photos, or a fitted temperature outside T_RANGE. `spread`: the models' disagreement on
    images none trained on; with it (and more models in the vote than behind a row) `temperature` pools the mean
    of probabilities and is fitted on simulated votes (`simulated_votes`), the one-model temperature recorded beside
    it. Without it, `temperature` pools the mean of logits and is fitted on the rows as they are (what the fit did
    before 2026-12-05): one model's T over-softens a vote of probabilities more than a vote of logits (4-fold run
    scored on held-out StyleGAN images: log loss 0.415 against 0.390, uncalibrated 0.394).
    """
    import time

    t0 = time.perf_counter()
    y = data.unit_labels().astype(int)
    before = data.unit_prob(expit(data.z))
    fallback = None
    fitted = NONE
    fit_extra: dict = {}
    if fixed is not None:
        method, fitted = fixed.method, fixed
    elif method != "none":
        if len(y) < MIN_ROWS:
            fallback = f"only {len(y)} out-of-fold {data.level}s (at least {MIN_ROWS} are needed)"
        elif len(np.unique(y)) < 2:
            fallback = f"the out-of-fold {data.level}s hold one class only (label {int(y[0])})"
        elif method == "temperature":
            t, pool, fit_extra = _vote_temperature(data, spread)
            if not T_RANGE[0] < t < T_RANGE[1]:
                fallback = (
                    f"the fitted temperature {t:.4g} is outside {T_RANGE}: the out-of-fold scores carry next to no "
                    f"signal (an untrained or diverged model?)"
                )
                fit_extra = {}
            else:
                fitted = Calibration("temperature", temperature=float(t), pool=pool)
        elif method == "isotonic":
            fitted = fit_isotonic(data)
        else:
            raise ConfigError(f"predict.calibration must be one of {', '.join(METHODS)} (got '{method}')")
    if fallback:
        log.warning("predict.calibration=%s: not fitted, %s; predicting uncalibrated (none)", method, fallback)
    after = before if fitted.method == "none" else data.unit_prob(fitted.from_logit(data.pooled(fitted.pool)))
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
        **fit_extra,
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
        pool=fitted.pool,  # a fixed calibration keeps its own
    )


def _vote_temperature(data: OofData, spread: Optional[EnsembleSpread]) -> tuple[float, str, dict]:
    """`temperature`'s T, the pool it acts on, and the fit's record of the vote simulation ({} without one)."""
    if spread is None or spread.models <= data.member_logits().shape[0]:  # no spread: the rows as they are
        return fit_temperature(replace(data, z=data.pooled("mean_logit"))), "mean_logit", {}
    one = fit_temperature(data)  # what the out-of-fold rows alone ask for
    if not T_RANGE[0] < one < T_RANGE[1]:
        return one, "mean_prob", {}
    votes = simulated_votes(data, spread)
    record = {
        "temperature_one_row": one,
        "member_var": spread.member_var,
        "models": spread.models,
        "spread_images": spread.images,
        "spread_source": spread.source,
        "replicates": int(len(votes)),
    }
    return fit_temperature(data, votes), "mean_prob", {"ensemble": record}


def fit_temperature(data: OofData, votes: Optional[np.ndarray] = None) -> float:
    """The temperature T minimising the out-of-fold log loss of sigmoid(z / T) (per video/photo after aggregating
    its faces when the data has groups): scipy's bounded scalar search over log T in [1e-3, 1e3]. `votes`: (R, N)
    simulated vote logits of the rows (`simulated_votes`) to fit on instead of the rows' own, all R scored."""
    y = data.unit_labels()
    zs = data.z[None] if votes is None else votes

    def loss(log_t: float) -> float:
        t = math.exp(log_t)
        return float(np.mean([log_loss_of(y, data.unit_prob(expit(z / t))) for z in zs]))

    from scipy.optimize import minimize_scalar  # here: applying a calibration (actors, replicas) needs none of these

    res = minimize_scalar(loss, bounds=(math.log(1e-3), math.log(1e3)), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(res.x))


def fit_isotonic(data: OofData) -> Calibration:
    """scikit-learn's IsotonicRegression of the label on sigmoid(z) (each video/photo weighing one when the data has
    groups: its faces share its label), kept as its interpolation table."""
    from sklearn.isotonic import IsotonicRegression

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
    from sklearn.metrics import roc_curve

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
