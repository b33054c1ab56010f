"""A data-parallel fold (2 gloo workers on Ray Train) against a plain fold task, on the same cores.

    python -m benchmarks.ddp [--cpus 2] [--epochs 3] [--n 448] [--model inception_resnet_v1]

One fold of the default recipe's sizes (crop 80, batch 32, the seed's network unless --model) on generated images,
through `raydf.distributed.folds.run_folds` on a local Ray instance of `--cpus` CPUs, three ways: one worker with all
the CPUs (a plain fold task, torch threads = CPUs), one worker with one CPU, and `--cpus` DDP workers of one CPU each
(`resources.workers_per_fold`). Images/s are training images over the training time of the epochs after the first
(from the fold's history; the first pays for start-up and warm-up); `fold_wall_s` is the whole fold, start-up
included (a DDP fold starts a Ray Train controller and its workers). On CPUs DDP only splits the cores a plain fold
would use with threads, so what this measures is the cost of the gloo all-reduce and of the extra processes.
Run it on a quiet machine: the load average is recorded with the figures. Writes results/ddp_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise with a bright square on the fakes: a task the network learns, so the fold does real work."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 160, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    c = size // 2
    images[labels == 1, c - 12 : c + 12, c - 12 : c + 12] = 230
    return images, labels


def _run(images_ref, labels_ref, splits, overrides: list[str]) -> dict:
    from raydf.config import load_config
    from raydf.distributed.folds import run_folds

    cfg = load_config(None, overrides)
    load = os.getloadavg()[0]
    t0 = time.time()
    ((_, info),) = run_folds(
        images_ref, labels_ref, splits, cfg, {"num_cpus": cfg.resources.cpus_per_fold, "num_gpus": 0}
    ).values()
    wall = time.time() - t0
    steady = info["history"][1:]
    steps = len(splits[0][0]) // cfg.train.batch_size
    train_s = [h["seconds"] for h in steady]
    return {
        "overrides": overrides,
        "workers": info.get("workers", 1),
        "epoch_seconds": [round(h["seconds"], 2) for h in info["history"]],
        "images_per_s": round(steps * cfg.train.batch_size * len(steady) / sum(train_s), 2),
        "fold_wall_s": round(wall, 1),
        "load_1min_before_after": [round(load, 2), round(os.getloadavg()[0], 2)],
        "val_loss": [round(h["val_loss"], 4) for h in info["history"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=448, help="images: 384 training rows (12 batches), 64 validation")
    parser.add_argument("--model", default="inception_resnet_v1")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ddp_cpu.json")
    args = parser.parse_args()
    import ray

    load_before = os.getloadavg()
    images, labels = _images(args.n, 112)
    n_val = 64
    splits = {0: (np.arange(n_val, args.n), np.arange(n_val))}
    base = [
        "data.resize=112",
        "data.crop=80",
        "train.batch_size=32",
        f"train.epochs={args.epochs}",
        f"train.patience={args.epochs}",
        f"model.name={args.model}",
        "resources.gpus_per_fold=0",
    ]
    ray.init(address="local", num_cpus=args.cpus, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        refs = ray.put(images), ray.put(labels)
        runs = {
            f"1 worker, {args.cpus} CPUs": _run(*refs, splits, base + [f"resources.cpus_per_fold={args.cpus}"]),
            "1 worker, 1 CPU": _run(*refs, splits, base + ["resources.cpus_per_fold=1"]),
            f"{args.cpus} DDP workers, 1 CPU each": _run(
                *refs, splits, base + ["resources.cpus_per_fold=1", f"resources.workers_per_fold={args.cpus}"]
            ),
        }
    finally:
        ray.shutdown()
    one = runs[f"1 worker, {args.cpus} CPUs"]["images_per_s"]
    ddp = runs[f"{args.cpus} DDP workers, 1 CPU each"]["images_per_s"]
    result = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "model": args.model,
        "train_images_per_epoch": (len(splits[0][0]) // 32) * 32,
        "runs": runs,
        "ddp_over_one_worker_same_cpus": round(ddp / one, 3),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
