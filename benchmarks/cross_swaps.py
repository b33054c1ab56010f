"""Cross-manipulation tests: recipes scored on two kinds of face swap that none of them saw.

    python -m benchmarks.cross_swaps [--data ../shared/data/ffhq-stylegan-2200] [--swaps 150] [--epochs 8]
        [--configs default pretrained] [--modes off only add] [--name cross_swaps]

Two test sets are made here from the same 300 shared FFHQ reals (never trained on), paired up:
- `swaps`: the face region of one photo of a pair (an ellipse around its MTCNN landmarks, aligned onto the other's
  landmarks by a similarity transform) blended into the other with `cv2.seamlessClone` (Poisson blending); the
  swaps are the fakes, their target photos the reals.
- `blends`: made another way, the other photo of each pair the target: the source face taken at half resolution
  (swaps between photos of different resolution), its colours moved to the target's (mean and spread in Lab within
  the face), alpha-blended with a feathered mask around the eyes, nose and mouth; then every photo of the set, real
  and fake, re-encoded as JPEG at quality 75 (a common social-media quality).
The rest of the shared set, less a held-out 10% of each class (an in-domain FFHQ/StyleGAN test), trains one run per
config and `data.synthetic_fakes` mode with the same folds: `off` the seed's way (FFHQ reals against StyleGAN
fakes), `only` self-blended fakes from the reals alone, `add` both. `raydf.evaluate` scores each run on the three
sets (AUC with a 95% bootstrap interval). Writes results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def landmarks(images: list[np.ndarray]) -> list[np.ndarray | None]:
    """The five MTCNN landmarks (5, 2) of each image's most confident face, or None."""
    import torch
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=False, device="cpu", post_process=False)
    out = []
    with torch.inference_mode():
        for img in images:
            _, _, lm = mtcnn.detect(img, landmarks=True)
            out.append(None if lm is None else np.asarray(lm[0], dtype=np.float32))
    return out


def swap(source: np.ndarray, target: np.ndarray, lm_s: np.ndarray, lm_t: np.ndarray) -> np.ndarray:
    """`source`'s face moved onto `target`'s (similarity transform of the landmarks), seamlessly cloned."""
    matrix, _ = cv2.estimateAffinePartial2D(lm_s, lm_t)
    h, w = target.shape[:2]
    warped = cv2.warpAffine(source, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    eyes, mouth = lm_t[:2].mean(0), lm_t[3:].mean(0)
    centre = (eyes + mouth) / 2
    span = float(np.linalg.norm(mouth - eyes))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(1.0 * span), int(1.3 * span)), 0, 0, 360, 255, -1)
    x, y, bw, bh = cv2.boundingRect(mask)
    center = (x + bw // 2, y + bh // 2)
    bgr = cv2.seamlessClone(
        cv2.cvtColor(warped, cv2.COLOR_RGB2BGR), cv2.cvtColor(target, cv2.COLOR_RGB2BGR), mask, center, cv2.NORMAL_CLONE
    )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def blend(source: np.ndarray, target: np.ndarray, lm_s: np.ndarray, lm_t: np.ndarray) -> np.ndarray:
    """`source`'s face at half resolution on `target`'s, its colours matched, alpha-blended with a feathered mask."""
    h, w = target.shape[:2]
    small = cv2.resize(source, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    matrix, _ = cv2.estimateAffinePartial2D(lm_s * 0.5, lm_t)  # from the half-size source onto the target
    warped = cv2.warpAffine(small, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    eyes, mouth = lm_t[:2].mean(0), lm_t[3:].mean(0)
    span = float(np.linalg.norm(mouth - eyes))
    mask = np.zeros((h, w), np.float32)
    hull = cv2.convexHull(np.concatenate([lm_t, [eyes - [0, 0.5 * span], mouth + [0, 0.4 * span]]]).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1.0)
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(0.5 * span),) * 2))
    mask = cv2.GaussianBlur(mask, (0, 0), 0.15 * span)[..., None]  # (h, w, 1) in [0, 1]
    # Reinhard colour transfer in Lab, statistics inside the face
    inside = mask[..., 0] > 0.5
    src = cv2.cvtColor(warped, cv2.COLOR_RGB2LAB).astype(np.float32)
    dst = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    src = (src - src[inside].mean(0)) / (src[inside].std(0) + 1e-6) * dst[inside].std(0) + dst[inside].mean(0)
    matched = cv2.cvtColor(np.clip(src, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)
    return np.clip(mask * matched + (1 - mask) * target.astype(np.float32), 0, 255).astype(np.uint8)


def make_sets(reals: list[Path], n: int, work: Path) -> list[Path]:
    """`swaps` and `blends` from 2n of `reals` (see the module's docstring); returns the photos used."""
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in reals[: 2 * n]]
    lms = landmarks(images)
    for kind in ("swaps", "blends"):
        (work / kind / "real").mkdir(parents=True, exist_ok=True)
        (work / kind / "fake").mkdir(parents=True, exist_ok=True)
    made = 0
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, 75]
    for i in range(0, 2 * n, 2):
        a, b = i, i + 1
        if lms[a] is None or lms[b] is None:
            continue
        fake = swap(images[a], images[b], lms[a], lms[b])
        cv2.imwrite(str(work / "swaps/fake" / f"swap{made:04d}.png"), cv2.cvtColor(fake, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(work / "swaps/real" / f"target{made:04d}.png"), cv2.cvtColor(images[b], cv2.COLOR_RGB2BGR))
        fake = blend(images[b], images[a], lms[b], lms[a])
        cv2.imwrite(str(work / "blends/fake" / f"blend{made:04d}.jpg"), cv2.cvtColor(fake, cv2.COLOR_RGB2BGR), jpeg)
        cv2.imwrite(
            str(work / "blends/real" / f"target{made:04d}.jpg"), cv2.cvtColor(images[a], cv2.COLOR_RGB2BGR), jpeg
        )
        made += 1
    print(f"{made} swaps and {made} blends made of {n} pairs", flush=True)
    return reals[: 2 * n]


def train_and_evaluate(work: Path, config: str, mode: str, epochs: int, extra: list[str]) -> dict:
    """One run trained and scored on the three sets; a run of an earlier call in the same --work is reused."""
    run = work / f"{config}-{mode}"
    if not (run / "evaluate" / "evaluation.json").is_file():
        cmd = [sys.executable, "-m", "raydf.train", "--config", config, f"run_dir={run}"]
        cmd += [f"data.train={work / 'train.csv'}", f"data.synthetic_fakes={mode}", "predict.explain=0"]
        if epochs:
            cmd += [f"train.epochs={epochs}", f"sched.t_max={epochs}"]
        # -q after every key=value: argparse takes no positional arguments after an option that ends a run of them
        subprocess.run([*cmd, *extra, "-q"], check=True, cwd=REPO)
        sets = [str(work / "swaps"), str(work / "blends"), str(work / "heldout" / "heldout.csv")]
        subprocess.run(
            [sys.executable, "-m", "raydf.evaluate", "--run", str(run), *[a for s in sets for a in ("--data", s)]],
            check=True,
            cwd=REPO,
        )
    results = json.loads((run / "evaluate" / "evaluation.json").read_text())["sets"]
    summary = json.loads((run / "summary.json").read_text())
    train_s = summary["wall_seconds"]
    return {
        "config": config,
        "synthetic_fakes": mode,
        "extra": extra,
        "train_seconds": round(train_s, 1),
        "epochs_run": [f["epochs_run"] for f in summary["folds"]],
        # a run on extracted faces (data.faces=on) scores each photo from its faces ("per video/photo")
        **{name.split("-")[-1]: dict(r.get("per image") or r["per video/photo"]) for name, r in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/ffhq-stylegan-2200")
    parser.add_argument("--swaps", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=0, help="train.epochs of every run (0: each config's own)")
    parser.add_argument("--configs", nargs="+", default=["default"], help="configs to train (configs/ or files)")
    parser.add_argument("--modes", nargs="+", default=["off", "only", "add"], help="data.synthetic_fakes modes")
    parser.add_argument("--extra", nargs="*", default=[], help="key=value overrides for every run")
    parser.add_argument("--name", default="cross_swaps", help="results/NAME.json")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--work", type=Path, help="keep the sets and runs here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="raydf-swaps-"))
    labels = pd.read_csv(args.data / "labels.csv")
    reals = sorted(args.data / p for p in labels.loc[labels["label"] == 0, "path"])
    used = {str(p) for p in make_sets(reals, args.swaps, work)}
    # Training: every image but the test sets' photos, less a held-out 10% of each class for an in-domain test.
    rest = labels[~labels["path"].map(lambda p: str(args.data / p) in used)].sample(frac=1, random_state=0)
    held = rest.groupby("label").head(int(0.1 * len(rest) / 2))
    train = rest.drop(held.index)
    pd.DataFrame({"path": [str(args.data / p) for p in train["path"]], "label": train["label"]}).to_csv(
        work / "train.csv", index=False
    )
    (work / "heldout").mkdir(exist_ok=True)  # raydf.evaluate names the set heldout-heldout
    pd.DataFrame({"path": [str(args.data / p) for p in held["path"]], "label": held["label"]}).to_csv(
        work / "heldout" / "heldout.csv", index=False
    )
    report = {"date": time.strftime("%Y-%m-%d"), "train_images": len(train), "epochs": args.epochs, "runs": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for config in args.configs:
        for mode in args.modes:
            row = train_and_evaluate(work, config, mode, args.epochs, args.extra)
            report["runs"].append(row)
            shown = {s: round(row[s]["auc"]["value"], 3) for s in ("swaps", "blends", "heldout")}
            print(config, mode, f"{row['train_seconds']:.0f}s", json.dumps(shown), flush=True)
            (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")  # each run as it ends


if __name__ == "__main__":
    main()
