"""`python -m raydf.predict --run RUN_DIR --images DIR_OR_CSV [--out FILE]`: soft vote of a finished run's folds."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from raydf import signals
from raydf.cli import add_common_args, run_cli
from raydf.errors import Interrupted
from raydf.pipelines.prediction import predict


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.predict", description=__doc__)
    parser.add_argument("--run", required=True, help="a finished run directory (has checkpoints/*fold*.pt)")
    parser.add_argument("--images", required=True, help="folder of images, CSV of paths, or a Kaggle template")
    parser.add_argument("--image-root", help="folder the CSV's relative paths resolve against (default: the CSV's)")
    parser.add_argument("--out", help="submission CSV to write (default: RUN_DIR/predictions.csv)")
    parser.add_argument("--address", help="Ray address of a running cluster (default: the run's ray.address)")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also predict each image flipped left-right and average (default: the run's predict.tta)",
    )
    parser.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="N",
        help="also write Grad-CAM heatmaps of the N most confident fakes and reals into OUT's stem + _explain/",
    )
    add_common_args(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    out = args.out or f"{args.run.rstrip('/')}/predictions.csv"
    try:
        print(predict(args.run, args.images, out, args.image_root, args.address, args.tta, args.explain))
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM (raydf.signals): the output is written whole or not at all
        raise Interrupted(
            f"interrupted ({signals.name(stop)}): nothing was written to {out}; run the same command again to predict",
            signals.exit_code(stop),
        ) from None
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
