"""raydf against the seed's way of running, side by side on the same images and the same machine.

    python -m benchmarks.run [--quick] [--data ../shared/data/ffhq-stylegan-2200] [--out benchmarks/results]

Sections: 1 input pipeline throughput (one core), 2 epoch efficiency, 3 end to end (`python -m raydf.train`
against `benchmarks/seed_style.py`), 4 inference (one soft-vote pass against K passes), 5 GPU figures (only
when CUDA is available). Prints a markdown table and writes `results.json`. Ratios, not absolute times, are
what carries over to other machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from benchmarks.seed_style import SeedDataset, k_separate_passes, seed_transforms
from raydf.config import load_config
from raydf.data.cache import DecodedCache
from raydf.data.catalog import read_train
from raydf.data.transforms import FastTrainTransform, seed_transform
from raydf.training.engine import Precision, to_input

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ffhq-stylegan-2200"


def _timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def split_data(data: Path, work: Path, n: int, test_share: float = 0.2, part: int = 0) -> tuple[Path, Path]:
    """A deterministic train/test split of the labelled set, as two CSVs with absolute paths. `part` k takes the
    k-th slice of `test_share` of the shuffled rows as the test set (0: the first, every benchmark's split), so
    parts 0..1/test_share - 1 test every image once."""
    table = read_train(data / "labels.csv").sample(frac=1.0, random_state=0).head(n).reset_index(drop=True)
    n_test = int(len(table) * test_share)
    if not 0 <= part < len(table) // max(n_test, 1):
        raise ValueError(f"part {part}: a test share of {test_share} has {len(table) // max(n_test, 1)} parts")
    suffix = f"-part{part}" if part else ""
    train, test = work / f"train{suffix}.csv", work / f"test{suffix}.csv"
    held = table.iloc[part * n_test : (part + 1) * n_test]
    table.drop(held.index).to_csv(train, index=False)
    held.to_csv(test, index=False)
    return train, test


def upscale_copies(paths: list[str], folder: Path, size: int = 600) -> list[str]:
    """600 px JPEGs made from the 256 px ones: decoding cost grows with the file, not with the network."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(paths):
        dst = folder / f"{i:05d}.jpg"
        cv2.imwrite(
            str(dst),
            cv2.resize(cv2.imread(p), (size, size), interpolation=cv2.INTER_CUBIC),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        out.append(str(dst))
    return out


def input_pipeline(paths: list[str], resize: int, crop: int, cache_dir: Path) -> dict:
    """Images/s on one core: the seed's decode + full pipeline per image, against raydf's epoch path
    (decoded cache in memory + the fast augmentation + device normalisation), and raydf's one-off decode."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    train_tf, _ = seed_transforms(resize, crop)
    seed_set = SeedDataset(paths, [0] * len(paths), train_tf)
    t_seed, _ = _timed(lambda: [seed_set[i] for i in range(len(paths))])
    t_decode, images = _timed(
        lambda: np.ascontiguousarray(DecodedCache.for_images(paths, resize, str(cache_dir)).load(threads=1))
    )
    fast = FastTrainTransform(crop)
    seed_transform(fast, 0)

    def raydf_epoch():
        for start in range(0, len(images), 64):  # per batch: augment, stack, normalise as the fold loop does
            batch = np.stack([fast(image=images[i])["image"] for i in range(start, min(start + 64, len(images)))])
            to_input(torch.from_numpy(batch), torch.device("cpu"))

    t_raydf, _ = _timed(raydf_epoch)
    n = len(paths)
    return {
        "images": n,
        "seed_img_s": n / t_seed,
        "raydf_img_s": n / t_raydf,
        "ratio": t_seed / t_raydf,
        "raydf_one_off_decode_img_s": n / t_decode,
    }


def epoch_efficiency(train_csv: Path, resize: int, crop: int, batch: int, n_train: int, cache_dir: Path) -> dict:
    """Pure network steps on tensors already in memory, divided by a real raydf epoch (same batches).

    Each is timed twice, interleaved, and the faster of each pair counts: the machine's speed drifts by 10% and
    more over a minute (a shared virtual machine), which a single pair would read as (in)efficiency.
    """
    from raydf.models.factory import build_model
    from raydf.training.fold_loop import train_fold

    threads = min(2, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    table = read_train(train_csv).head(n_train)
    images = DecodedCache.for_images(table["path"].tolist(), resize, str(cache_dir)).load()
    labels = table["label"].to_numpy()
    n_val = len(table) // 4
    val_idx, train_idx = np.arange(n_val), np.arange(n_val, len(table))
    cfg = load_config(
        None,
        [
            f"data.resize={resize}",
            f"data.crop={crop}",
            f"train.batch_size={batch}",
            "train.epochs=1",
            "train.eval_batch_size=128",
        ],
    )
    cpu = torch.device("cpu")
    precision = Precision.resolve(cfg.train.precision, cpu)  # the same arithmetic as the real epoch
    steps = len(train_idx) // batch

    def real_epoch() -> float:
        return train_fold(images, labels, train_idx, val_idx, cfg, 0).history[0]["seconds"]

    def pure_epoch() -> float:
        model = build_model(cfg.model.dropout, cfg.model.name).to(memory_format=torch.channels_last)
        opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
        x = torch.randn(batch, 3, crop, crop).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch,))
        xv = torch.randn(128, 3, crop, crop).contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        model.train()
        for _ in range(steps):
            with precision.autocast(cpu):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad(), precision.autocast(cpu):
            for start in range(0, n_val, 128):
                model(xv[: min(128, n_val - start)])
        return time.perf_counter() - t0

    timings = [(real_epoch(), pure_epoch()) for _ in range(2)]
    real, pure = min(t[0] for t in timings), min(t[1] for t in timings)
    return {
        "threads": threads,
        "train_steps": steps,
        "val_images": n_val,
        "pure_network_s": pure,
        "raydf_epoch_s": real,
        "efficiency": pure / real,
        "precision": str(precision.dtype or "fp32"),
        "pairs_s": timings,
    }


def end_to_end(train_csv: Path, test_csv: Path, overrides: list[str], work: Path) -> dict:
    """`python -m raydf.train` against the seed-style script: same data, folds, epochs, sizes, 2 cores."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAYDF_CACHE=str(work / "cache-e2e"))
    args = [f"data.train={train_csv}", f"data.test={test_csv}", *overrides]
    t_raydf, proc = _timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "raydf.train", f"run_dir={work / 'raydf-run'}", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    t_seed, proc = _timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "benchmarks.seed_style", "--threads", "2", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    seed = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((work / "raydf-run" / "summary.json").read_text())
    return {
        "raydf_s": t_raydf,
        "seed_style_s": t_seed,
        "ratio": t_raydf / t_seed,
        "raydf_cv_accuracy": summary["cv"]["accuracy"],
        "seed_style_inference_s": seed["inference_seconds"],
        "run_dir": str(work / "raydf-run"),
    }


def inference(run_dir: Path, paths: list[str], resize: int, crop: int) -> dict:
    """One distributed soft-vote pass (decode once, K models per batch) against K separate passes, on `paths`.

    The soft vote includes starting its actor pool (a new worker process that imports torch and facenet-pytorch and
    loads K models), a fixed cost of several seconds that the K in-process passes do not pay.
    """
    import ray

    from raydf.distributed.inference import soft_vote_predict
    from raydf.models.factory import build_model
    from raydf.runs.storage import RunStorage
    from raydf.training.checkpoint import load_fold_checkpoint

    storage = RunStorage(run_dir)
    states = [load_fold_checkpoint(storage, k)[0] for k in range(2)]
    torch.set_num_threads(2)
    models = []
    for state in states:
        m = build_model(0.6)
        m.load_state_dict(state)
        models.append(m.eval())
    _, val_tf = seed_transforms(resize, crop)
    t_k, _ = _timed(k_separate_passes, models, paths, val_tf, 128)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        refs = [ray.put({k: v.numpy() for k, v in s.items()}) for s in states]
        t_vote, _ = _timed(
            lambda: soft_vote_predict(paths, refs, resize=resize, crop=crop, dropout=0.6, batch_size=128)
        )  # raydf's default actor pool
    finally:
        ray.shutdown()
    return {"images": len(paths), "k": len(states), "k_passes_s": t_k, "soft_vote_s": t_vote, "ratio": t_vote / t_k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small subsets, 1 epoch: under 5 minutes on 2 cores")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if not (args.data / "labels.csv").is_file():
        sys.exit(f"no labels.csv in {args.data}: pass --data with the FFHQ/StyleGAN set (path,label CSV)")
    n_images, epochs, n_pipe = (600, 1, 200) if args.quick else (2200, 3, 600)
    resize, crop = 128, 96  # the end-to-end target's 96 px
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_csv, test_csv = split_data(args.data, work, n_images)
        sample = read_train(args.data / "labels.csv")["path"].tolist()[:n_pipe]
        results["input_256px"] = input_pipeline(sample, 256, 156, work / "c256")
        results["input_600px"] = input_pipeline(upscale_copies(sample, work / "big"), 256, 156, work / "c600")
        results["epoch_efficiency"] = epoch_efficiency(
            train_csv, resize, crop, 32, 400 if args.quick else 1200, work / "c-eff"
        )
        e2e = [
            "train.folds=2",
            f"train.epochs={epochs}",
            f"sched.t_max={epochs}",
            f"data.resize={resize}",
            f"data.crop={crop}",
            "train.batch_size=32",
            "resources.gpus_per_fold=0",
        ]
        results["end_to_end"] = end_to_end(train_csv, test_csv, e2e, work)
        run_dir = Path(results["end_to_end"].pop("run_dir"))
        results["inference"] = inference(run_dir, pd.read_csv(test_csv)["path"].tolist(), resize, crop)
        if not args.quick:  # a test set of competition size, where the actor pool's start-up is amortised
            every = read_train(args.data / "labels.csv")["path"].tolist()
            results["inference_all"] = inference(run_dir, every, resize, crop)
    results["gpu"] = None if not torch.cuda.is_available() else "run benchmarks.gpu on a GPU machine"
    args.out.mkdir(parents=True, exist_ok=True)
    name = "results-quick.json" if args.quick else "results.json"
    (args.out / name).write_text(json.dumps(results, indent=2))
    print(table(results))


def table(r: dict) -> str:
    rows = [
        (
            "input pipeline 256 px (img/s, 1 core)",
            r["input_256px"]["seed_img_s"],
            r["input_256px"]["raydf_img_s"],
            f"{r['input_256px']['ratio']:.2f}x faster",
            ">= 2x",
        ),
        (
            "input pipeline 600 px (img/s, 1 core)",
            r["input_600px"]["seed_img_s"],
            r["input_600px"]["raydf_img_s"],
            f"{r['input_600px']['ratio']:.2f}x faster",
            ">= 4x",
        ),
        (
            "epoch efficiency (pure network / real epoch)",
            None,
            r["epoch_efficiency"]["efficiency"],
            f"{r['epoch_efficiency']['efficiency']:.2f}",
            ">= 0.85",
        ),
        (
            "end to end (s, 2 folds)",
            r["end_to_end"]["seed_style_s"],
            r["end_to_end"]["raydf_s"],
            f"{r['end_to_end']['ratio']:.2f} of seed",
            "<= 0.85",
        ),
    ]
    for key in ("inference", "inference_all"):
        if key in r:
            rows.append(
                (
                    f"inference (s, {r[key]['images']} images)",
                    r[key]["k_passes_s"],
                    r[key]["soft_vote_s"],
                    f"{r[key]['ratio']:.2f} of K passes",
                    "<= 0.9",
                )
            )
    lines = ["| measure | seed way | raydf | result | target |", "|---|---|---|---|---|"]
    for name, seed, ours, result, target in rows:
        fmt = lambda v: "" if v is None else f"{v:.1f}" if v > 10 else f"{v:.3f}"
        lines.append(f"| {name} | {fmt(seed)} | {fmt(ours)} | {result} | {target} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
