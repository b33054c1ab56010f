"""`python -m raydf.train [--config FILE] [key=value ...]`: K-fold training, then the soft-vote submission.

`python -m raydf.train resume=RUN_DIR` continues an interrupted run in place.
"""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

from raydf.cli import add_common_args, config_from_args, run_cli
from raydf.config import check_data_paths, to_yaml


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.train", description=__doc__)
    parser.add_argument("--config", help="YAML file or name in configs/ (default: configs/default.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=5 data.train=x.csv")
    add_common_args(parser)
    return parser.parse_intermixed_args(argv)  # key=value pairs on both sides of a flag (-q, -v)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    check_data_paths(cfg)  # a wrong path fails in a second, before the imports below (seconds on a small machine)
    from raydf.pipelines.training import train  # imports torch and Ray: only when there is work to do
    from raydf.runs.report import short_report
    from raydf.runs.storage import RunStorage

    run_dir = train(cfg)
    storage = RunStorage(run_dir)
    if storage.local:
        print("\n" + short_report(storage.local_path()))
    else:  # the report reads local files; a URI run prints its headline numbers
        summary = json.loads(storage.read_text("summary.json"))
        print(f"\nrun directory: {run_dir}")
        print(json.dumps({k: summary[k] for k in ("cv", "test", "bad_inputs") if k in summary}, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
