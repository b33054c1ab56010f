"""`python -m raydf.report RUN_DIR`: (re)build a run's plots and `report.md` from its files alone
(`raydf.runs.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from raydf.cli import add_common_args, run_cli
from raydf.runs.report import build_report, short_report


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.report", description=__doc__)
    parser.add_argument("run", help="a finished run directory (has summary.json, history.csv, oof.csv)")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    build_report(Path(args.run))
    print(short_report(Path(args.run)))
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
