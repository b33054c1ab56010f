"""`python -m raydf.evaluate --run RUN_DIR --data SET [--data SET ...] [--out DIR]`: a finished run scored on other
labelled sets (cross-data-set evaluation): accuracy, ROC AUC, log loss, AP and EER with 95% bootstrap intervals,
per image or face and per video/photo, and the sets' ROC curves side by side."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from raydf import signals
from raydf.cli import add_common_args, run_cli
from raydf.errors import Interrupted
from raydf.pipelines.evaluation import evaluate, table


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.evaluate", description=__doc__)
    parser.add_argument("--run", required=True, help="a finished run directory (has checkpoints/*fold*.pt)")
    parser.add_argument("--data", required=True, action="append", help="a labelled set (repeat for several)")
    parser.add_argument("--out", help="folder to write (default: RUN_DIR/evaluate)")
    parser.add_argument("--address", help="Ray address of a running cluster (default: the run's ray.address)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals (default 1000)")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    try:
        path = evaluate(args.run, args.data, args.out, args.address, args.bootstrap)
    except KeyboardInterrupt as stop:
        message = f"interrupted ({signals.name(stop)}); run the same command again"
        raise Interrupted(message, signals.exit_code(stop)) from None
    print(table(path))
    print(f"written: {path} and {path.parent / 'roc.png'}")
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
