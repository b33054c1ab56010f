"""The cost of self-blended fakes: epoch time with `data.synthetic_fakes` against without, on the same images.

    python -m benchmarks.self_blend [--data ../shared/data/ffhq-stylegan-2200] [--epochs 2] [--threads 1]
                                    [--mask auto|ellipse|landmarks]

One fold of the default config (InceptionResnetV1, 112 -> 80 px, bf16 where the CPU has it) trained in this
process on half the shared set (64 other images validate, so that the time is the training pass's), with off, add
and only; the epochs after the first are timed (the first pays for warm-up). The modes train on different numbers
of items per epoch (`add`: one fake per real more; `only`: the reals alone), so the time per item is what compares.
`--data` is a folder with labels.csv (path,label) or a faces folder (FACES_DIR, or its faces.csv) made by
`python -m raydf.faces`, whose landmarks the masks follow with `--mask auto` or `landmarks` (synth.mask); `ellipse`
ignores them. Writes results/self_blend.json (results/self_blend_MASK.json with another --mask than auto).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from raydf.config import load_config
from raydf.data.face_store import MANIFEST, is_face_manifest, manifest_landmarks, read_manifest
from raydf.data.images import decode_checked
from raydf.training.fold_loop import train_fold

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/ffhq-stylegan-2200")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mask", choices=("auto", "ellipse", "landmarks"), default="auto", help="synth.mask")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest = args.data / MANIFEST if args.data.is_dir() else args.data
    if is_face_manifest(manifest):
        labels_csv = read_manifest(manifest)[0]
        paths = labels_csv["path"].tolist()
    else:
        labels_csv = pd.read_csv(args.data / "labels.csv")
        paths = [str(args.data / p) for p in labels_csv["path"]]
    base = load_config(None, [f"train.epochs={args.epochs}", f"sched.t_max={args.epochs}", "train.patience=99"])
    decoded = decode_checked(paths, base.data.resize)
    images, labels = decoded.images, labels_csv["label"].to_numpy()[decoded.usable]
    landmarks = manifest_landmarks(manifest, [p for p, ok in zip(paths, decoded.usable) if ok], base.data.resize)
    with_landmarks = 0 if landmarks is None else int(np.isfinite(landmarks).all(axis=(1, 2)).sum())
    order = np.random.default_rng(0).permutation(len(images))
    # A small validation set: the epochs timed are the training passes, where the synthesis runs.
    val_idx, train_idx = np.sort(order[:64]), np.sort(order[64 : 64 + len(order) // 2])
    results = {}
    for mode in ("off", "add", "only"):
        cfg = load_config(
            None,
            [
                f"train.epochs={args.epochs}",
                f"sched.t_max={args.epochs}",
                "train.patience=99",
                f"data.synthetic_fakes={mode}",
                f"synth.mask={args.mask}",
            ],
        )
        t0 = time.time()
        outcome = train_fold(images, labels, train_idx, val_idx, cfg, 0, landmarks=landmarks)
        timed = [row["seconds"] for row in outcome.history[1:]] or [outcome.history[0]["seconds"]]
        reals = int((labels[train_idx] == 0).sum())
        items = {"off": len(train_idx), "add": len(train_idx) + reals, "only": reals}[mode]
        results[mode] = {
            "epoch_seconds": float(np.mean(timed)),
            "train_items_per_epoch": items,
            "ms_per_item": 1000 * float(np.mean(timed)) / items,
            "val_loss": outcome.val_loss,
            "wall_seconds": time.time() - t0,
        }
        print(mode, json.dumps(results[mode]), flush=True)
    off = results["off"]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "images": len(images),
        "mask": args.mask,
        "images_with_landmarks": with_landmarks,
        "modes": results,
        "per_item_ratio": {m: results[m]["ms_per_item"] / off["ms_per_item"] for m in ("add", "only")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "self_blend.json" if args.mask == "auto" else f"self_blend_{args.mask}.json"
    (args.out / name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["per_item_ratio"]))


if __name__ == "__main__":
    main()
