"""Table-level stages at millions of rows: does anything loop in Python once per row?

    python -m benchmarks.table_scale [--rows 1000000] [--label after] [--profile]

Builds a synthetic training table and test table of `--rows` rows each (paths as strings, labels, groups,
content hashes with a few byte-identical copies; no image files: none of these stages opens an image), then
times each table-level stage the training pipeline runs on them: reading the CSVs (`raydf.data.catalog`),
fold assignment (`raydf.data.folds`, three ways), finding duplicates (`raydf.data.preflight.find_duplicates`),
building and writing oof.csv and submission.csv, the per-video/photo aggregation
(`raydf.runs.submission.aggregate_sources`: 20 faces per video, and one face per photo), the metrics
(`classification_metrics`, `bootstrap_metrics` with 1,000 resamples) and the report with its plots
(`raydf.runs.report.build_report` on a fake run directory whose oof.csv and submission.csv have `--rows` rows).

Each run's seconds go under `--label` in results/table_scale.json (other labels are kept), so the file holds the
numbers before and after a change. `bootstrap_metrics` is first timed on 10 resamples; when 1,000 would take
more than 5 minutes, that figure is extrapolated (x100) and marked so. `--profile` prints the top of a cProfile
of every stage.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from raydf.data.catalog import read_test, read_train
from raydf.data.folds import assign_folds
from raydf.data.preflight import _warn_duplicates, find_duplicates
from raydf.runs import plots
from raydf.runs.report import build_report, read_run
from raydf.runs.submission import aggregate_sources, build_submission
from raydf.training.metrics import bootstrap_metrics, classification_metrics

REPO = Path(__file__).resolve().parents[1]
FOLDS = 4


def make_inputs(n: int, folder: Path, seed: int = 0) -> dict:
    """Train and test CSVs (relative paths in 1,000 folders), their content hashes (1% copies) and P(fake)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    label = rng.integers(0, 2, n)
    train_rel = pd.Series(ids % 1000).astype(str).radd("img/d").str.cat(pd.Series(ids).astype(str), sep="/") + ".jpg"
    group = pd.Series(ids // 20).astype(str).radd("src")  # 20 images per source
    pd.DataFrame({"path": train_rel, "label": label, "group": group}).to_csv(folder / "train.csv", index=False)
    test_rel = train_rel.str.replace("img/", "test/", regex=False)
    test_label = rng.integers(0, 2, n)
    pd.DataFrame({"image": test_rel, "label": test_label}).to_csv(folder / "test.csv", index=False)
    hashes = pd.Series(ids).astype(str).radd("h")
    copies = rng.choice(n, n // 100, replace=False)  # 1% of the rows copy another training row
    train_hash = hashes.to_numpy(dtype=object).copy()
    train_hash[copies] = train_hash[rng.integers(0, n, len(copies))]
    test_hash = pd.Series(ids).astype(str).radd("t").to_numpy(dtype=object)
    test_hash[: n // 1000] = train_hash[: n // 1000]  # 0.1% of the test set are training images
    # A model that is right most of the time: P(fake) near the label, with noise.
    prob = np.clip(0.5 + (label - 0.5) * 0.6 + rng.normal(0, 0.25, n), 0, 1)
    test_prob = np.clip(0.5 + (test_label - 0.5) * 0.6 + rng.normal(0, 0.25, n), 0, 1)
    return {
        "train_hash": list(train_hash),
        "test_hash": list(test_hash),
        "prob": prob,
        "test_prob": test_prob,
    }


def fake_run_dir(run: Path, train: pd.DataFrame, folds: np.ndarray, test: pd.DataFrame, data: dict) -> None:
    """What a finished run leaves for the report: summary.json, config.yaml, history.csv, oof.csv, submission.csv."""
    run.mkdir()
    oof = pd.DataFrame({"path": train["path"], "label": train["label"], "fold": folds, "prob_fake": data["prob"]})
    oof.to_csv(run / "oof.csv", index=False)
    build_submission(test, data["test_prob"]).to_csv(run / "submission.csv", index=False)
    test[["image", "label"]].to_csv(run / "test_labels.csv", index=False)
    history = pd.DataFrame(
        [
            {"fold": k, "epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_acc": 1 - 0.5 / e}
            for k in range(FOLDS)
            for e in range(1, 6)
        ]
    )
    history.to_csv(run / "history.csv", index=False)
    m = {"accuracy": 0.9, "auc": 0.95, "log_loss": 0.3, "ap": 0.94, "eer": 0.1}
    folds_info = [
        {
            "fold": k,
            "best_epoch": 5,
            "val_loss": 0.2,
            "val_acc": 0.9,
            "epochs_run": 5,
            "started_at": 0.0,
            "finished_at": 10.0,
            "node_id": "abcdef0123",
            "pid": 1,
            "attempts": 1,
        }
        for k in range(FOLDS)
    ]
    (run / "summary.json").write_text(json.dumps({"folds": folds_info, "cv": m, "test": m}))
    (run / "config.yaml").write_text("run_dir: x\n")


class Timer:
    def __init__(self, profile: bool) -> None:
        self.seconds: dict[str, float] = {}
        self.profile = profile

    def __call__(self, name: str, fn, *args, **kwargs):
        prof = cProfile.Profile() if self.profile else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        out = fn(*args, **kwargs)
        if prof:
            prof.disable()
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        print(f"{name:<32} {self.seconds[name]:9.3f} s", flush=True)
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(12)
            print(s.getvalue())
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--label", default="after", help="the key the seconds go under in the JSON")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of every stage")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args()
    n, t = args.rows, Timer(args.profile)
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = make_inputs(n, folder)
        train = t("read_train (csv, with group)", read_train, folder / "train.csv")
        test = t("read_test (csv)", read_test, folder / "test.csv")
        t("folds kfold + copies", assign_folds, train.drop(columns="group"), FOLDS, 42, "kfold", data["train_hash"])
        t("folds stratified", assign_folds, train.drop(columns="group"), FOLDS, 42, "stratified")
        folds = t("folds group + copies", assign_folds, train, FOLDS, 42, "group", data["train_hash"])
        dup = t("find_duplicates", find_duplicates, train, data["train_hash"], test, data["test_hash"])
        logging.disable(logging.WARNING)  # its message, not its time
        t("warn_duplicates", _warn_duplicates, dup)
        logging.disable(logging.NOTSET)

        def oof_csv() -> None:  # as raydf.pipelines.training._summarize builds and writes it
            oof = pd.DataFrame(
                {"path": train["path"], "label": train["label"], "fold": folds, "prob_fake": data["prob"]}
            )
            oof.to_csv(index=False)

        t("oof.csv (build + write)", oof_csv)
        bad = range(0, n, 10_000)  # unreadable test rows: the prior and a flag
        readable = np.delete(data["test_prob"], bad)
        t("submission.csv (build + write)", lambda: build_submission(test, readable, bad, 0.5).to_csv(index=False))
        faces = pd.DataFrame({"source": train["group"], "prob_fake": data["prob"], "flag": ""})
        none = pd.DataFrame({"source": pd.Series([], dtype=str)})
        t("aggregate_sources mean", aggregate_sources, faces, none, "mean")
        t("aggregate_sources confident", aggregate_sources, faces, none, "confident")

        def face_sources() -> None:  # as raydf.pipelines.training._summarize maps oof rows to their video/photo
            source_of = dict(zip(train["path"], train["group"]))
            [source_of.get(p) for p in train["path"]]

        t("oof rows -> sources (training)", face_sources)
        photos = pd.DataFrame({"source": train["path"], "prob_fake": data["prob"], "flag": ""})  # one face each
        t("aggregate_sources mean, 1 face/src", aggregate_sources, photos, none, "mean")
        t("classification_metrics", classification_metrics, train["label"], data["prob"])
        t("bootstrap_metrics (10)", bootstrap_metrics, train["label"], data["prob"], 10)
        if t.seconds["bootstrap_metrics (10)"] * 100 > 300:
            t.seconds["bootstrap_metrics (1000)"] = round(t.seconds["bootstrap_metrics (10)"] * 100, 1)
            notes["bootstrap_metrics (1000)"] = "extrapolated: 100 x the 10-resample time"
            print(f"{'bootstrap_metrics (1000)':<32} {t.seconds['bootstrap_metrics (1000)']:9.1f} s (extrapolated)")
        else:
            t("bootstrap_metrics (1000)", bootstrap_metrics, train["label"], data["prob"], 1000)

        run = folder / "run"
        fake_run_dir(run, train, folds, test, data)
        files = t("report: read_run", read_run, run)
        truth = files.test_truth
        t("plot roc (oof + test)", plots.roc, files.oof, run / "roc.png", test=truth)
        panels = {"out-of-fold": files.oof, "test": truth}
        t("plot confusion", plots.confusion, panels, run / "confusion_matrix.png")
        labels = truth["label"].to_numpy()
        t("plot test histogram", plots.probability_histogram, files.submission, run / "test_prob_fake.png", labels)
        t("report: build_report (all)", build_report, run)

    path = args.out / "table_scale.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["rows"] = n
    results[args.label] = {"seconds": t.seconds, "notes": notes, "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
