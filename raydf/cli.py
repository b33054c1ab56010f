"""What every `python -m raydf.<command>` shares: logging set-up and turning user errors into one clear line."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import TYPE_CHECKING, Callable, Optional

from raydf.errors import RaydfError

if TYPE_CHECKING:
    from raydf.config import Config


def setup_logging(verbosity: int) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Ray prints a warning per deprecated internal and a token-auth notice on every start; keep them for -v.
    if verbosity < 1:
        for name in ("ray", "ray.data", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of user errors")


def config_from_args(config: Optional[str], overrides: list[str], default: Optional[str] = None) -> "Config":
    """The config of a command line: `--config` (else `default`) and overrides, or with `resume=RUN_DIR` that
    run's own config plus overrides that do not change its results."""
    from raydf.config import load_config
    from raydf.resume import resume_config

    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if resume:
        return resume_config(resume[-1], config, [o for o in overrides if not o.startswith("resume=")])
    return load_config(config or default, overrides)


def run_cli(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> None:
    """Run `main(args)`; a user error prints `raydf: error: ...` (no traceback) and exits non-zero."""
    setup_logging(-1 if args.quiet else args.verbose)
    try:
        code = main(args)
    except RaydfError as e:
        if args.debug:
            raise
        print(f"raydf: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("raydf: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
