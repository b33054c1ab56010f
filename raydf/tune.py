"""`python -m raydf.tune [--config FILE] [key=value ...]`: a Ray Tune sweep (ASHA) over the `tune.space` keys.

Writes RUN_DIR/trials.csv, sweep.png and best.yaml (train with `python -m raydf.train --config
RUN_DIR/best.yaml`, or set tune.then_train=true). `python -m raydf.tune resume=RUN_DIR` continues an
interrupted sweep without rerunning finished trials.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from raydf.cli import add_common_args, config_from_args, run_cli
from raydf.config import to_yaml

DEFAULT_CONFIG = "tune"  # configs/tune.yaml: the demo sweep, sized for a 2-core CPU


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.tune", description=__doc__)
    parser.add_argument("--config", help=f"YAML file or name in configs/ (default: configs/{DEFAULT_CONFIG}.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="e.g. tune.num_samples=20 'tune.space[optim.lr].high=0.01' tune.then_train=true",
    )
    add_common_args(parser)
    return parser.parse_intermixed_args(argv)  # key=value pairs on both sides of a flag (-q, -v)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args.config, args.overrides, default=DEFAULT_CONFIG)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from raydf.pipelines.sweep import run_sweep  # imports torch and Ray: only when there is work to do

    run_dir = run_sweep(cfg)
    print(
        f"\nsweep directory: {run_dir}\ntrain with the best configuration:\n"
        f"  python -m raydf.train --config {run_dir}/best.yaml"
    )
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
