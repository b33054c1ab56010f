"""The backbones raydf offers (`model.name`), side by side on this machine: size and speed at two input sizes.

    python -m benchmarks.backbones [--sizes 96 156] [--threads 1] [--out benchmarks/results]

For each backbone and crop size: parameters, training images/s per CPU core (forward, loss, backward and the
RAdam step raydf runs, at the precision `train.precision=auto` picks, channels-last, batch 32, one thread) and
inference images/s (eval mode, no gradients, batch 64). Random uint8 images through raydf's own `to_input`:
this measures the network, not the input pipeline (`benchmarks.run` measures that). Writes backbones.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from raydf.config import DEFAULT_MODEL, load_config
from raydf.models.factory import build_model
from raydf.training.engine import Precision, to_input
from raydf.training.fold_loop import make_optimizer

BACKBONES = [
    DEFAULT_MODEL,
    "resnet18",
    "efficientnet_b0",
    "efficientnet_b2",
    "efficientnet_b4",
    "convnext_tiny",
    "resnet50",
    "legacy_xception",
]


def _best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls (a shared VM's speed drifts; the fastest is the least disturbed)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(name: str, size: int, train_batch: int = 32, infer_batch: int = 64, repeats: int = 3) -> dict:
    cpu = torch.device("cpu")
    cfg = load_config(None, [f"model.name={name}", f"data.crop={max(size, 75)}", f"data.resize={max(size, 75)}"])
    precision = Precision.resolve(cfg.train.precision, cpu)
    torch.manual_seed(0)
    model = build_model(cfg.model.dropout, name).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    images = torch.randint(0, 256, (train_batch, size, size, 3), dtype=torch.uint8)
    labels = torch.randint(0, 2, (train_batch,))

    def train_step() -> None:
        model.train()
        with precision.autocast(cpu):
            loss = F.cross_entropy(model(to_input(images, cpu)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    batch = torch.randint(0, 256, (infer_batch, size, size, 3), dtype=torch.uint8)

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        with precision.autocast(cpu):
            model(to_input(batch, cpu))

    train_step()  # warm-up: first-call allocations, oneDNN kernel selection
    infer()
    train_s = _best_of(train_step, repeats)
    infer_s = _best_of(infer, repeats)
    return {
        "model": name,
        "size": size,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(precision.dtype, "fp32"),
        "train_img_s_per_core": round(train_batch / train_s / torch.get_num_threads(), 1),
        "infer_img_s": round(infer_batch / infer_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 156])
    parser.add_argument("--models", nargs="+", default=BACKBONES)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a fold on CPU uses one per core)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for size in args.sizes:
            if name == DEFAULT_MODEL and size < 75:
                continue
            row = measure(name, size)
            rows.append(row)
            print(
                f"{name:>20} {size:>4} px  {row['params_m']:>6} M params  train {row['train_img_s_per_core']:>6} img/s"
                f" per core  infer {row['infer_img_s']:>6} img/s  ({row['precision']})",
                flush=True,
            )
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": args.threads}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backbones.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print()
    print("| model | px | params (M) | train img/s per core | inference img/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['params_m']} | {r['train_img_s_per_core']} | {r['infer_img_s']} |")


if __name__ == "__main__":
    main()
