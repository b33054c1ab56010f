"""Do self-blended fakes generalise? Three recipes at equal budget, scored on face swaps none of them saw.

    python -m benchmarks.cross_swaps [--data ../shared/data/ffhq-stylegan-2200] [--swaps 150] [--epochs 8]

The test set is made here from the shared FFHQ reals (never trained on): for pairs of photos, the face region of
one (an ellipse around its MTCNN landmarks, aligned onto the other's landmarks by a similarity transform) is
blended into the other with `cv2.seamlessClone`: a face swap. The swaps are the fakes, their target photos the
reals. The rest of the shared set trains three runs with the default config and the same folds and epochs:
(a) the seed's way, the FFHQ reals against the StyleGAN fakes; (b) `data.synthetic_fakes=only` on those reals;
(c) `add`. `raydf.evaluate` scores each on the swaps (AUC with a 95% bootstrap interval) and on the held-out
StyleGAN/FFHQ images. Writes results/cross_swaps.json.
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


def make_swaps(reals: list[Path], n: int, out: Path) -> list[Path]:
    """`n` swaps from 2n of `reals` into out/fake, their targets into out/real; returns the photos used."""
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in reals[: 2 * n]]
    lms = landmarks(images)
    (out / "real").mkdir(parents=True, exist_ok=True)
    (out / "fake").mkdir(parents=True, exist_ok=True)
    made = 0
    for i in range(0, 2 * n, 2):
        s, t = i, i + 1
        if lms[s] is None or lms[t] is None:
            continue
        fake = swap(images[s], images[t], lms[s], lms[t])
        cv2.imwrite(str(out / "fake" / f"swap{made:04d}.png"), cv2.cvtColor(fake, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "real" / f"target{made:04d}.png"), cv2.cvtColor(images[t], cv2.COLOR_RGB2BGR))
        made += 1
    print(f"{made} swaps made of {n} pairs", flush=True)
    return reals[: 2 * n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/ffhq-stylegan-2200")
    parser.add_argument("--swaps", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--work", type=Path, help="keep the sets and runs here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="raydf-swaps-"))
    labels = pd.read_csv(args.data / "labels.csv")
    reals = sorted(args.data / p for p in labels.loc[labels["label"] == 0, "path"])
    used = {str(p) for p in make_swaps(reals, args.swaps, work / "swaps")}
    # Training: every image but the swap photos, less a held-out 10% of each class for an in-domain test.
    rest = labels[~labels["path"].map(lambda p: str(args.data / p) in used)].sample(frac=1, random_state=0)
    held = rest.groupby("label").head(int(0.1 * len(rest) / 2))
    train = rest.drop(held.index)
    pd.DataFrame({"path": [str(args.data / p) for p in train["path"]], "label": train["label"]}).to_csv(
        work / "train.csv", index=False
    )
    pd.DataFrame({"path": [str(args.data / p) for p in held["path"]], "label": held["label"]}).to_csv(
        work / "heldout.csv", index=False
    )
    recipes = {"a_labelled": "off", "b_only": "only", "c_add": "add"}
    report = {"date": time.strftime("%Y-%m-%d"), "train_images": len(train), "epochs": args.epochs, "recipes": {}}
    for name, mode in recipes.items():
        run = work / name
        t0 = time.time()
        cmd = [
            sys.executable,
            "-m",
            "raydf.train",
            f"run_dir={run}",
            f"data.train={work / 'train.csv'}",
            f"train.epochs={args.epochs}",
            f"sched.t_max={args.epochs}",
            f"data.synthetic_fakes={mode}",
            "predict.explain=0",
            "-q",
        ]
        subprocess.run(cmd, check=True, cwd=REPO)
        train_s = time.time() - t0
        subprocess.run(
            [
                sys.executable,
                "-m",
                "raydf.evaluate",
                "--run",
                str(run),
                "--data",
                str(work / "swaps"),
                "--data",
                str(work / "heldout.csv"),
                "-q",
            ],
            check=True,
            cwd=REPO,
        )
        sets = json.loads((run / "evaluate" / "evaluation.json").read_text())["sets"]
        report["recipes"][name] = {
            "synthetic_fakes": mode,
            "train_seconds": train_s,
            **{s: {k: v for k, v in r["per image"].items()} for s, r in sets.items()},
        }
        print(name, json.dumps({s: r["per image"]["auc"] for s, r in sets.items()}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cross_swaps.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
