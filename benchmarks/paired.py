"""Two runs scored on the same sets: the difference of their AUCs with a paired 95% bootstrap interval.

    python -m benchmarks.paired RUN_A RUN_B [--sets swaps blends] [--bootstrap 2000] [--json OUT.json]

Both runs must have been scored by `raydf.evaluate` on the same sets (RUN/evaluate/SET/predictions.csv). Each
resample draws the same images for both runs, so what the two share (which images happen to be hard) cancels
out: two intervals that overlap can still hide a difference that a paired interval shows, and the reverse.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def scored(run: Path, name: str) -> tuple[pd.DataFrame, str]:
    """The run's per-photo predictions of set `name` (`image`, `prob_fake`) and the set's spec as evaluated."""
    spec = json.loads((run / "evaluate" / "evaluation.json").read_text())["sets"][name]["set"]
    pred = pd.read_csv(run / "evaluate" / name / "predictions.csv", keep_default_na=False)
    return pred[["image", "prob_fake"]], spec


def paired_auc(labels: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """AUC of scores `a` and `b` on the same `labels`, and of a - b with a 95% interval from `n` paired resamples
    (a resample with one class only is skipped)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        if labels[idx].min() == labels[idx].max():
            continue
        diffs.append(roc_auc_score(labels[idx], a[idx]) - roc_auc_score(labels[idx], b[idx]))
    auc_a, auc_b = roc_auc_score(labels, a), roc_auc_score(labels, b)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {
        "n": int(len(labels)),
        "auc_a": float(auc_a),
        "auc_b": float(auc_b),
        "diff": float(auc_a - auc_b),
        "ci95": [float(lo), float(hi)],
        "share_a_better": float(np.mean(np.asarray(diffs) > 0)),
    }


def compare(run_a: Path, run_b: Path, sets: list[str], n: int) -> dict:
    from raydf.data.catalog import read_test

    out = {"a": str(run_a), "b": str(run_b), "bootstrap": n, "sets": {}}
    for name in sets:
        pred_a, spec = scored(run_a, name)
        pred_b, _ = scored(run_b, name)
        truth = read_test(spec)[["image", "label"]]
        both = truth.merge(pred_a, on="image").merge(pred_b, on="image", suffixes=("_a", "_b"))
        if len(both) != len(truth):
            raise SystemExit(f"{name}: {len(truth)} images in the set, {len(both)} scored by both runs")
        out["sets"][name] = paired_auc(
            both["label"].to_numpy(), both["prob_fake_a"].to_numpy(), both["prob_fake_b"].to_numpy(), n
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--sets", nargs="+", default=["swaps", "blends"], help="set names under RUN/evaluate/")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = compare(args.run_a, args.run_b, args.sets, args.bootstrap)
    for name, r in result["sets"].items():
        lo, hi = r["ci95"]
        print(
            f"{name}: AUC {r['auc_a']:.3f} vs {r['auc_b']:.3f}, difference {r['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] "
            f"(A better in {r['share_a_better']:.0%} of {args.bootstrap} paired resamples; n={r['n']})"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
