"""How each `data.cache` mode grows with the set: memory, pre-flight and epoch time at 10 k, 50 k and 200 k images.

    python -m benchmarks.scale [--sizes 10000 50000] [--big 200000] [--big-modes auto encoded stream] [--work DIR]

Face-like images from the demo generator at 128 px (JPEG, ~7 KB each), written once (in parallel) under --work.
Every run is `python -m raydf.train` in its own process (a fresh local Ray), at the default data.resize=112 and
data.crop=80, 2 folds x 1 epoch of timm's `test_efficientnet` (0.1 M parameters: the data path, not the network,
is what is measured), no test set. Each run's summary.json gives the driver's and the fold workers' peak resident
memory (shared pages they touched included), the pre-flight's time and the epoch's time per 1 k images.
The big set runs with data.cache=auto (what it picks, and why, is in its summary) and with the modes that never
hold it decoded (--big-modes).
Writes results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SIZE = 128  # px of the generated files


def _write(args: tuple[str, int, int]) -> None:
    from raydf.data.demo import _image, _write_jpg

    folder, start, stop = args
    for i in range(start, stop):
        img, label = _image(0, 0, i, SIZE, 1.0)
        _write_jpg(Path(folder) / f"{i // 1000:04d}" / f"{i:07d}.jpg", img)


def generate(work: Path, n: int) -> Path:
    """n images (alternating real, fake) and `train-{n}.csv` for every prefix asked for later."""
    folder = work / "images"
    done = work / f"generated-{n}"
    if not done.exists():
        for d in range(0, (n + 999) // 1000):
            (folder / f"{d:04d}").mkdir(parents=True, exist_ok=True)
        step = 5000
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(_write, [(str(folder), s, min(n, s + step)) for s in range(0, n, step)]))
        done.touch()
    return folder


def table(work: Path, n: int) -> Path:
    csv = work / f"train-{n}.csv"
    if not csv.exists():
        paths = [f"images/{i // 1000:04d}/{i:07d}.jpg" for i in range(n)]
        pd.DataFrame({"path": paths, "label": [i % 2 for i in range(n)]}).to_csv(csv, index=False)
    return csv


def run(work: Path, n: int, mode: str, tag: str, train: Path | None = None, extra: tuple[str, ...] = ()) -> dict:
    run_dir = work / "runs" / f"{tag}-{n}-{mode}"
    if not (run_dir / "summary.json").exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        cmd = [
            sys.executable,
            "-m",
            "raydf.train",
            f"run_dir={run_dir}",
            f"data.train={train or table(work, n)}",
            f"data.cache={mode}",
            f"data.cache_dir={work / 'cache' / f'{tag}-{mode}'}",  # its own: every run pays its own pre-flight
            "model.name=test_efficientnet",
            "train.folds=2",
            "train.epochs=1",
            "train.batch_size=64",
            "train.eval_batch_size=128",
            "resources.gpus_per_fold=0",
            "predict.explain=0",
            *extra,
        ]
        t0 = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            raise RuntimeError(f"{cmd} failed:\n{out.stderr[-4000:]}")
        print(f"  {tag} {n} {mode}: {time.time() - t0:.0f}s", flush=True)
    s = json.loads((run_dir / "summary.json").read_text())
    folds = s["folds"]
    epoch_s = float(pd.read_csv(run_dir / "history.csv")["seconds"].max())  # the slower fold's epoch (train + val)
    cache_dir = work / "cache" / f"{tag}-{mode}"
    kind = "encoded-*.bin" if s["data_cache"]["mode"] == "encoded" else "decoded-*.npy"
    held = sum(p.stat().st_size for p in cache_dir.glob(kind) if f"-{n}-" in p.name)
    return {
        "n": n,
        "mode_asked": mode,
        "mode": s["data_cache"]["mode"],
        "in_object_store": s["data_cache"]["in_object_store"],
        "reason": s["data_cache"]["reason"],
        "driver_peak_rss_mb": s["timings"]["driver_peak_rss_mb"],
        "worker_peak_rss_mb": max(f["peak_rss_mb"] for f in folds),
        "preflight_s": s["timings"]["preflight_check_seconds"],
        "share_s": s["timings"].get("share_images_seconds"),
        "epoch_s": epoch_s,
        # each fold trains on n/2 images and validates on n/2: n images through the data path per fold and epoch
        "epoch_s_per_1k": epoch_s / n * 1000,
        "cache_file_bytes_per_image": held / n if held else 0.0,
        "wall_s": s["wall_seconds"],
    }


def capacity() -> dict:
    """This machine's node as auto sees it, and what auto would pick here for DFDC-sized sets at 256 px."""
    import ray

    from raydf.data.cache_policy import choose_cache
    from raydf.distributed.data import node_capacities

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        nodes = node_capacities(str(Path.home() / ".cache/raydf"))
    finally:
        ray.shutdown()
    picks = {}
    for n in (10_000, 200_000, 3_200_000):
        for per_image in (10_500, 21_000):  # FFHQ 256 px JPEG; the demo faces at 256 px
            plan = choose_cache(n, 256, n * per_image, nodes)
            picks[f"{n} x {per_image} B"] = {"mode": plan.mode, "in_object_store": plan.in_object_store}
    return {"node": vars(nodes[0]), "auto_at_256px": picks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--big", type=int, default=200_000)
    parser.add_argument("--big-modes", nargs="+", default=["auto", "encoded", "stream"])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared/data/ffhq-stylegan-2200")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/raydf/bench-scale")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/scale.json")
    args = parser.parse_args()
    t0 = time.time()
    generate(args.work, max([*args.sizes, args.big]))
    print(f"generated in {time.time() - t0:.0f}s", flush=True)
    rows = []
    for n in args.sizes:
        for mode in ("memory", "disk", "encoded", "stream"):
            if mode == "memory" and n * 256 * 256 * 3 > 2e9:
                continue  # would not fit this machine's object store (auto says so too)
            rows.append(run(args.work, n, mode, "modes"))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"runs": rows}, indent=2))
    for mode in args.big_modes if args.big else ():
        rows.append(run(args.work, args.big, mode, mode if mode == "auto" else "modes"))
        args.out.write_text(json.dumps({"runs": rows}, indent=2))
    # The 256 px target on real faces (the shared FFHQ/StyleGAN JPEGs): decoded in the object store against encoded.
    n_shared = len(pd.read_csv(args.shared / "labels.csv"))
    at_256 = ("data.resize=256", "data.crop=156")
    shared = [run(args.work, n_shared, m, "ffhq256", args.shared / "labels.csv", at_256) for m in ("memory", "encoded")]
    print(json.dumps(shared, indent=1))
    args.out.write_text(
        json.dumps({"runs": rows, "ffhq_256px": shared, "image_px": SIZE, "capacity": capacity()}, indent=2)
    )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
