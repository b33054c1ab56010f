"""`python -m raydf.train [--config FILE] [key=value ...]`: K-fold training, then the soft-vote submission.

`python -m raydf.train resume=RUN_DIR` continues an interrupted run in place.
"""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

from raydf.cli import add_common_args, config_from_args, run_cli
from raydf.config import to_yaml


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.train", description=__doc__)
    parser.add_argument("--config", help="YAML file or name in configs/ (default: configs/default.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=5 data.train=x.csv")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from raydf.pipeline import train  # imports torch and Ray: only when there is work to do

    from raydf.storage import RunStorage

    run_dir = train(cfg)
    summary = json.loads(RunStorage(run_dir).read_text("summary.json"))
    print(f"\nrun directory: {run_dir}")
    for name in ("cv", "test"):
        if name in summary:
            m = summary[name]
            auc = f"{m['auc']:.4f}" if m["auc"] is not None else "n/a"
            print(f"{name:>4}: accuracy {m['accuracy']:.4f}  auc {auc}  log loss {m['log_loss']:.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
