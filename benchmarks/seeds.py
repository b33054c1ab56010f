"""Seeds x folds in one run (train.seeds) against one run per seed: wall time per model trained, on this machine.

    python -m benchmarks.seeds [--n-train 480] [--epochs 3] [--model resnet18] [--work DIR]

Four runs of `python -m raydf.train`, each in its own process with a fresh local Ray instance on this machine's
cores, on a demo set (--n-train images, split in 2 folds; no test set: training is what is measured):

- `2 folds, seed 42` and `2 folds, seed 7`: the two seeds one run after the other (the DFDC winner's way);
- `2 folds x seeds [42, 7], 1 CPU each`: four fold tasks in one run, two at a time on 2 cores;
- `2 folds x seeds [42, 7], 0.5 CPU each`: all four at once (resources.cpus_per_fold=0.5, one torch thread each).

Per run: the command's wall time, the fold phase's wall time (summary.json `folds_seconds`), both per model trained,
the mean epoch time of a model (history.csv), and the share of the cluster's CPUs the fold tasks held during the
fold phase (sum of task seconds x CPUs each / (fold phase x CPUs)). The 1-minute load average before and after
each run is recorded: other processes on the machine slow every figure. Writes results/seeds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]

RUNS = {  # name -> (seeds, cpus per fold task)
    "2 folds, seed 42": ([42], 1),
    "2 folds, seed 7": ([7], 1),
    "2 folds x seeds [42, 7], 1 CPU each": ([42, 7], 1),
    "2 folds x seeds [42, 7], 0.5 CPU each": ([42, 7], 0.5),
}


def run(work: Path, name: str, seeds: list[int], cpus: float, train_csv: str, args: argparse.Namespace) -> dict:
    run_dir = work / "runs" / name.replace(" ", "_").replace(",", "").replace("[", "").replace("]", "")
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    cmd = [
        sys.executable,
        "-m",
        "raydf.train",
        f"run_dir={run_dir}",
        f"data.train={train_csv}",
        f"model.name={args.model}",
        "train.folds=2",
        f"train.epochs={args.epochs}",
        f"train.patience={args.epochs}",  # every model runs every epoch: the same work in every run
        f"sched.t_max={args.epochs}",
        f"train.seed={seeds[0]}",
        f"train.seeds={seeds}".replace(" ", "") if len(seeds) > 1 else "train.seeds=null",
        f"resources.cpus_per_fold={cpus}",
        "resources.gpus_per_fold=0",
        "train.precision=fp32",
        "predict.explain=0",
    ]
    load = os.getloadavg()[0]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    wall = time.time() - t0
    if out.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-4000:]}")
    s = json.loads((run_dir / "summary.json").read_text())
    models = s["folds"]
    folds_s = s["timings"]["folds_seconds"]
    cpus_total = os.cpu_count() or 1
    held = sum(f["finished_at"] - f["started_at"] for f in models) * cpus / (folds_s * cpus_total)
    epoch_s = float(pd.read_csv(run_dir / "history.csv")["seconds"].mean())
    row = {
        "run": name,
        "seeds": seeds,
        "cpus_per_fold": cpus,
        "models": len(models),
        "load_1min_before": round(load, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "command_wall_s": round(wall, 1),
        "folds_phase_s": round(folds_s, 1),
        "command_wall_s_per_model": round(wall / len(models), 1),
        "folds_phase_s_per_model": round(folds_s / len(models), 1),
        "mean_epoch_s": round(epoch_s, 2),
        "cpu_share_held": round(held, 3),
        "cv_auc": s["cv"]["auc"],
        "cv_auc_per_seed": {k: v["auc"] for k, v in s.get("cv_seeds", {}).items()},
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/raydf/bench-seeds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/seeds.json")
    args = parser.parse_args()
    from raydf.data.demo import ensure_demo

    demo = ensure_demo(args.work / "demo", n_train=args.n_train, n_test=8, size=128)
    rows = [run(args.work, name, seeds, cpus, str(demo.train), args) for name, (seeds, cpus) in RUNS.items()]
    one_by_one = rows[0]["command_wall_s"] + rows[1]["command_wall_s"]
    result = {
        "machine": {"cpus": os.cpu_count()},
        "settings": {"n_train": args.n_train, "epochs": args.epochs, "model": args.model, "data.resize": 112},
        "runs": rows,
        # The two seeds as two runs one after the other, against one run of both (all four models, 0.5 CPU each).
        "one_run_per_seed_wall_s": round(one_by_one, 1),
        "speed_up_one_run_over_two": {r["run"]: round(one_by_one / r["command_wall_s"], 2) for r in rows[2:]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
