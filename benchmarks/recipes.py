"""The seed's recipe against a preset, on the same data, split and folds, at (about) equal wall time on 2 cores.

    python -m benchmarks.recipes --seed-epochs 6 --preset CONFIG --preset-epochs 9 [--preset-extra k=v ...]
        [--both-extra k=v ...] [--name LABEL] [--preset-only] [--baseline CONFIG] [--data ...] [--out ...]

Both run `python -m raydf.train` on the shared FFHQ/StyleGAN set split 80/20 (1,760 training images in 2 folds,
440 test images), one fold per core. The seed's recipe is `configs/seed.yaml` with CPU hardware and 2 folds; only
its epoch count is cut to fit the budget (its schedule, sizes and early stopping stay the seed's). Epoch counts are
chosen so both take about the same wall time; the wall times are reported beside the scores. `--both-extra` sets keys
for both runs (another fold split and initialisation: train.seed=N). `--baseline budget --seed-epochs 18` compares
against another preset instead of the seed's recipe. Writes recipes-LABEL.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import DEFAULT_DATA, REPO, split_data

CPU = ["resources.gpus_per_fold=0", "resources.cpus_per_fold=1", "resources.loader_workers=0", "train.folds=2"]


def run(name: str, config: str, epochs: int, train_csv: Path, test_csv: Path, work: Path, extra: list[str]) -> dict:
    run_dir = work / name
    args = [
        "--config",
        config,
        f"run_dir={run_dir}",
        f"data.train={train_csv}",
        f"data.test={test_csv}",
        f"train.epochs={epochs}",
        *CPU,
        *extra,
    ]
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAYDF_CACHE=str(work / "cache"))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "raydf.train", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    summary = json.loads((run_dir / "summary.json").read_text())
    row = {
        "recipe": name,
        "config": config,
        "overrides": [f"train.epochs={epochs}", *extra],
        "wall_s": round(wall, 1),
        "folds_s": round(summary["timings"]["folds_seconds"], 1),
        "epochs_run": [f["epochs_run"] for f in summary["folds"]],
        "best_epoch": [f["best_epoch"] for f in summary["folds"]],
        "cv_accuracy": summary["cv"]["accuracy"],
        "cv_auc": summary["cv"]["auc"],
        "test_accuracy": summary["test"]["accuracy"],
        "test_auc": summary["test"]["auc"],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed-epochs", type=int, default=6, help="the baseline's epochs")
    parser.add_argument("--baseline", default="seed", help="the config to compare against (default: the seed's)")
    parser.add_argument("--preset", default="seed", help="the candidate's config (with --preset-extra overrides)")
    parser.add_argument("--name", default="candidate", help="the candidate's label in the table")
    parser.add_argument("--preset-epochs", type=int, required=True)
    parser.add_argument("--preset-extra", nargs="*", default=[], help="key=value overrides for the preset only")
    parser.add_argument("--both-extra", nargs="*", default=[], help="key=value overrides for both runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--preset-only", action="store_true", help="exploring: skip the seed's run")
    args = parser.parse_args()
    if not (args.data / "labels.csv").exists():
        sys.exit(f"{args.data}/labels.csv not found: pass --data with the shared FFHQ/StyleGAN set")
    with tempfile.TemporaryDirectory(prefix="raydf-recipes-") as tmp:
        work = Path(tmp)
        train_csv, test_csv = split_data(args.data, work, n=2200)
        rows = []
        if not args.preset_only:
            rows.append(run(args.baseline, args.baseline, args.seed_epochs, train_csv, test_csv, work, args.both_extra))
        extra = [*args.both_extra, *args.preset_extra]
        rows.append(run(args.name, args.preset, args.preset_epochs, train_csv, test_csv, work, extra))
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.preset_only:
        (args.out / f"recipes-{args.name}.json").write_text(json.dumps(rows, indent=2))
    print("\n| recipe | wall (s) | epochs run | CV accuracy | CV AUC | test accuracy | test AUC |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['recipe']} | {r['wall_s']} | {r['epochs_run']} | {r['cv_accuracy']:.4f} | {r['cv_auc']:.4f} | "
            f"{r['test_accuracy']:.4f} | {r['test_auc']:.4f} |"
        )


if __name__ == "__main__":
    main()
