"""Calibration and the decision threshold measured on finished runs (issue 27's targets).

    python -m benchmarks.calibration --shared RUN_DIR [--train] [--swaps RUN_DIR ...] [--sets SET ...]
        [--work DIR] [--name calibration]

- `--shared RUN_DIR`: a run on the shared FFHQ/StyleGAN set with its labelled test split (no shift between the
  out-of-fold data and the test set). With `--train` and no such run yet, it is trained first: configs/pretrained.yaml
  on the 80/20 split of benchmarks.recipes (2 folds, one per core), `predict.threshold=youden`. Its summary.json has
  the test metrics after (`test`) and before (`test_uncalibrated`) calibration, accuracy at the chosen threshold and at
  0.5, and the seconds calibration took; a copy of it is refitted with `isotonic` by `raydf.calibrate` (no inference).
- `--swaps RUN_DIR ...`: finished runs of benchmarks.cross_swaps (made before calibration existed). Each is COPIED
  into --work (the original is never modified), calibrated there by `raydf.calibrate` (temperature, youden) from its
  out-of-fold files, and scored by `raydf.evaluate` on `--sets`; the original's own evaluate/evaluation.json is the
  "before" (the same models, uncalibrated).
- `--splits K` (with `--shared`): K - 1 more runs like it (RUN-part1 ...), each testing another fifth of the shared
  set (benchmarks.run.split_data's parts), trained with `--train` when missing; ECE and the rest are pooled over
  their test sets (every image tested once, by a run that never trained on it), where one split's 440 images cannot
  tell ECE 0.03 from sampling noise.
Writes results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.run import DEFAULT_DATA, REPO, split_data
from raydf.data.catalog import read_test
from raydf.training.metrics import classification_metrics

KEYS = ("accuracy", "log_loss", "ece", "brier", "auc")
CPU = ["resources.gpus_per_fold=0", "resources.cpus_per_fold=1", "resources.loader_workers=0", "train.folds=2"]


def train_shared(run_dir: Path, data: Path, work: Path, part: int = 0) -> None:
    train_csv, test_csv = split_data(data, work, n=2200, part=part)
    cmd = [sys.executable, "-m", "raydf.train", "--config", "pretrained", f"run_dir={run_dir}"]
    cmd += [f"data.train={train_csv}", f"data.test={test_csv}", *CPU, "predict.threshold=youden", "-q"]
    subprocess.run(cmd, check=True, cwd=REPO)


def _pick(m: dict) -> dict:
    return {k: (m[k]["value"] if isinstance(m.get(k), dict) else m.get(k)) for k in KEYS}


def shared_figures(run_dir: Path, work: Path) -> dict:
    """The shared run's figures under the current code: a copy is calibrated again by `raydf.calibrate` (temperature,
    youden; no inference, no training), so a run trained before a change to the fit is measured with it."""
    from raydf.pipelines.calibration import calibrate_run

    t0 = time.perf_counter()
    current = _recalibrated(run_dir, work)
    s = json.loads((current / "summary.json").read_text())
    trained = json.loads((run_dir / "summary.json").read_text())
    out = {
        "run": str(run_dir),
        "calibration": s["calibration"],
        "threshold": s["threshold"],
        "test_before": _pick(s.get("test_uncalibrated", s["test"])),  # the same when calibration fell back
        "test_after": _pick(s["test"]),
        "test_accuracy_at_threshold": s["threshold_test_accuracy"],
        "calibration_seconds": s["calibration"]["seconds"],
        "calibrate_command_seconds": time.perf_counter() - t0,
        "training_images": int(pd.read_csv(run_dir / "oof.csv").shape[0]),
        "wall_seconds": trained["wall_seconds"],
    }
    out["pools_and_temperatures"] = _vote_variants(current, s)
    out["ece_sampling_floor"] = _ece_floor(current)
    copy = work / f"{run_dir.name}-isotonic"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tensorboard", "state"))
    t0 = time.perf_counter()
    cal = calibrate_run(str(copy), ["predict.calibration=isotonic", "predict.threshold=youden"])
    iso = json.loads((copy / "summary.json").read_text())
    out["isotonic"] = {
        "fit_seconds": cal.fit["seconds"],
        "calibrate_command_seconds": time.perf_counter() - t0,
        "oof": {"before": cal.fit["oof_before"], "after": cal.fit["oof_after"]},
        "test_after": _pick(iso["test"]),
        "test_accuracy_at_threshold": iso["threshold_test_accuracy"],
    }
    return out


def _recalibrated(run_dir: Path, work: Path) -> Path:
    """A copy of `run_dir` in `work`, calibrated again by `raydf.calibrate` (temperature, youden) with this code."""
    from raydf.pipelines.calibration import calibrate_run

    current = work / f"{run_dir.name}-temperature"
    shutil.rmtree(current, ignore_errors=True)
    shutil.copytree(run_dir, current, ignore=shutil.ignore_patterns("tensorboard", "state"))
    calibrate_run(str(current), ["predict.calibration=temperature", "predict.threshold=youden"])
    return current


def cross_split_figures(runs: list[Path], work: Path) -> dict:
    """Test calibration pooled over runs whose test sets are disjoint parts of the shared set (`--splits`): every
    image is tested once, by a run that never trained on it, so ECE is measured on all of them instead of one
    test split (at 440 images a perfectly calibrated P(fake) already scores ~0.05: `ece_sampling_floor`)."""

    frames, per_run = [], []
    for run_dir in runs:
        current = _recalibrated(run_dir, work)
        before = pd.read_csv(run_dir / "test_labels.csv")  # label, prob_fake_uncalibrated (the plain vote)
        after = pd.read_csv(current / "submission.csv").set_index("image")
        rows = after.loc[before["image"]]
        frame = before.assign(prob_fake=rows["prob_fake"].to_numpy(), cut_label=rows["label"].to_numpy())
        frames.append(frame)
        summary = json.loads((current / "summary.json").read_text())
        c = summary["calibration"]
        per_run.append(
            {
                "run": str(run_dir),
                "test_images": len(frame),
                "temperature": c.get("temperature"),
                "method": c["method"],
                "before": _pick(classification_metrics(frame["label"], frame["prob_fake_uncalibrated"])),
                "after": _pick(classification_metrics(frame["label"], frame["prob_fake"])),
                "threshold": summary["threshold"],
                "accuracy_at_threshold": float((frame["cut_label"] == frame["label"]).mean()),
            }
        )
    pooled = pd.concat(frames, ignore_index=True)
    if pooled["image"].duplicated().any():
        raise SystemExit("the runs' test sets overlap: pass runs of different --splits parts")
    p = pooled["prob_fake"].to_numpy()
    return {
        "test_images": len(pooled),
        "before": _pick(classification_metrics(pooled["label"], pooled["prob_fake_uncalibrated"])),
        "after": _pick(classification_metrics(pooled["label"], p)),
        "accuracy_at_threshold": float((pooled["cut_label"] == pooled["label"]).mean()),  # each run's own cut
        "ece_sampling_floor": _floor(p),
        "runs": per_run,
    }


def _test_probs(run_dir: Path):
    from raydf.pipelines.calibration import model_probs

    models = pd.read_csv(run_dir / "test_models.csv")
    truth = pd.read_csv(run_dir / "test_labels.csv").set_index("image")["label"]
    return model_probs(models), truth.loc[models["image"]].to_numpy()


def _vote_variants(run_dir: Path, s: dict) -> dict:
    """Test log loss and ECE of both pools (the logit of the mean of the models' probabilities, raydf's vote; the
    mean of their logits, what calibration files of 2026-12-04 used) at the temperature fitted to the vote, at the
    one fitted to single out-of-fold rows, and at the one the test labels would choose (an oracle, for scale)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import expit

    from raydf.inference.calibration import models_logit
    from raydf.training.metrics import expected_calibration_error, log_loss_of

    c = s["calibration"]
    if c["method"] != "temperature":
        return {}
    temperatures = {"vote": c["temperature"], "one_row": c.get("ensemble", {}).get("temperature_one_row")}
    probs, labels = _test_probs(run_dir)
    out = {}
    for pool in ("mean_prob", "mean_logit"):
        z = models_logit(probs, pool)
        best = minimize_scalar(lambda t, z=z: log_loss_of(labels, expit(z / t)), bounds=(0.05, 20), method="bounded").x
        rows = {}
        for name, t in {**temperatures, "test_oracle": float(best), "T=1": 1.0}.items():
            if t is not None:
                p = expit(z / t)
                rows[name] = {"T": t, "log_loss": log_loss_of(labels, p), "ece": expected_calibration_error(labels, p)}
        out[pool] = rows
    return out


def _ece_floor(run_dir: Path, draws: int = 500) -> dict:
    """The ECE (15 bins) a perfectly calibrated P(fake) scores on a test set of this size: labels drawn from the
    run's calibrated test P(fake) itself. A measured ECE near it is sampling noise, not miscalibration."""
    return _floor(pd.read_csv(run_dir / "submission.csv")["prob_fake"].to_numpy(), draws)


def _floor(p, draws: int = 500) -> dict:
    """See `_ece_floor`, for P(fake) `p` (N,)."""
    import numpy as np

    from raydf.training.metrics import expected_calibration_error

    rng = np.random.default_rng(0)
    eces = [expected_calibration_error((rng.random(len(p)) < p).astype(int), p) for _ in range(draws)]
    return {"n": int(len(p)), "mean": float(np.mean(eces)), "p90": float(np.percentile(eces, 90))}


def swaps_figures(run_dir: Path, work: Path, sets: list[str]) -> dict:
    before = json.loads((run_dir / "evaluate" / "evaluation.json").read_text())["sets"]
    copy = work / run_dir.name
    if not (copy / "evaluate" / "evaluation.json").is_file():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("evaluate", "tensorboard", "state"))
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "raydf.calibrate", str(copy), "predict.threshold=youden", "-q"], check=True, cwd=REPO
        )
        calibrate_s = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "raydf.evaluate", "--run", str(copy), "-q"]
        subprocess.run([*cmd, *[a for s in sets for a in ("--data", s)]], check=True, cwd=REPO)
        (copy / "calibrate_seconds.txt").write_text(f"{calibrate_s:.2f}\n")
    after = json.loads((copy / "evaluate" / "evaluation.json").read_text())["sets"]
    summary = json.loads((copy / "summary.json").read_text())
    # The original may have scored a set under another name (a copy of the same CSV elsewhere): match by its rows.
    by_rows = {_rows_key(r["set"]): name for name, r in before.items()}
    rows = {}
    for name, result in after.items():
        level = "per image"
        before_name = by_rows[_rows_key(result["set"])]
        pred = pd.read_csv(copy / "evaluate" / name / "predictions.csv")
        truth = read_test(result["set"])  # the predictions' rows, in order
        rows[name.split("-")[-1]] = {
            # scored again from the original's predictions: runs made before ECE and Brier were reported lack them
            "before": _pick(classification_metrics(truth["label"], _original(run_dir, before_name)["prob_fake"])),
            "after": _pick(result[level]),
            "accuracy_at_threshold": float((pred["label"].to_numpy() == truth["label"].to_numpy()).mean()),
        }
    return {
        "run": str(run_dir),
        "calibration": summary["calibration"],
        "threshold": summary["threshold"],
        "calibrate_command_seconds": float((copy / "calibrate_seconds.txt").read_text()),
        "sets": rows,
    }


def _original(run_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run_dir / "evaluate" / name / "predictions.csv")


def _rows_key(spec: str) -> tuple:
    table = read_test(spec)
    return tuple(map(str, table["path"])), tuple(table["label"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, help="a run on the shared set with a labelled test split")
    parser.add_argument("--train", action="store_true", help="train --shared first when it does not exist")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--splits", type=int, default=1, help="with --shared: K runs testing disjoint fifths (RUN-partK), pooled"
    )
    parser.add_argument("--swaps", type=Path, nargs="*", default=[], help="finished runs of benchmarks.cross_swaps")
    parser.add_argument("--sets", nargs="*", default=[], help="labelled sets raydf.evaluate scores the --swaps runs on")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "raydf-calibration")
    parser.add_argument("--name", default="calibration")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": time.strftime("%Y-%m-%d")}
    if args.shared:
        if args.train and not (args.shared / "summary.json").is_file():
            train_shared(args.shared, args.data, args.work)
        report["shared"] = shared_figures(args.shared, args.work)
        print(json.dumps(report["shared"], indent=1), flush=True)
        if args.splits > 1:
            runs = [args.shared]
            for part in range(1, args.splits):
                run = args.shared.parent / f"{args.shared.name}-part{part}"
                if args.train and not (run / "summary.json").is_file():
                    train_shared(run, args.data, args.work, part)
                runs.append(run)
            report["shared_pooled"] = cross_split_figures(runs, args.work)
            print(json.dumps({k: v for k, v in report["shared_pooled"].items() if k != "runs"}, indent=1), flush=True)
    report["swaps"] = [swaps_figures(run, args.work, args.sets) for run in args.swaps]
    for row in report["swaps"]:
        print(json.dumps(row, indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
