"""`python -m raydf.calibrate RUN_DIR [key=value ...]`: fit (or refit) a finished run's calibration and decision
threshold on its out-of-fold files alone (no training, no inference), then rewrite its calibration.json,
submission.csv (from test_models.csv), summary.json and report.md. Keys: predict.calibration, predict.threshold."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from raydf.cli import add_common_args, run_cli


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.calibrate", description=__doc__)
    parser.add_argument("run", help="a finished run directory (has oof.csv and checkpoints/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. predict.calibration=isotonic predict.threshold=eer"
    )
    add_common_args(parser)
    return parser.parse_intermixed_args(argv)  # key=value pairs on both sides of a flag (-q, -v)


def main(args: argparse.Namespace) -> int:
    from raydf.pipelines.calibration import calibrate_run

    cal = calibrate_run(args.run, args.overrides)
    fit = cal.fit
    print(
        f"{args.run}: calibration {cal.method}"
        + (f" (T={cal.temperature:.4f})" if cal.method == "temperature" else "")
        + (f", fallback: {cal.fallback}" if cal.fallback else "")
        + f"; out-of-fold log loss {fit['oof_before']['log_loss']:.4f} -> {fit['oof_after']['log_loss']:.4f}, "
        f"ECE {fit['oof_before']['ece']:.4f} -> {fit['oof_after']['ece']:.4f}; "
        f"threshold {cal.threshold_mode} = {cal.threshold:.4f}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
