"""What every `python -m raydf.<command>` shares: logging set-up and turning user errors into one clear line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Callable, Optional

from raydf import signals
from raydf.errors import RaydfError

if TYPE_CHECKING:
    from raydf.config import Config


# Ray loggers kept quiet unless -v: the INFO chatter of Ray Data's executor, the notice that token auth is on
# (the secure default of a local instance) and Ray Data's own progress output (raydf shows its own).
QUIET_RAY_LOGGERS = {
    "ray": logging.WARNING,
    "ray.data": logging.WARNING,
    "ray.tune": logging.WARNING,
    "ray.serve": logging.WARNING,
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    "ray.data._internal.progress": logging.ERROR,
}


# Libraries whose DEBUG output is noise even at -vv (matplotlib scores every font it finds).
NOISY_AT_DEBUG = ("matplotlib", "PIL")


def setup_logging(verbosity: int) -> None:
    """-q: warnings only; default: raydf at INFO, Ray at WARNING; -v: Ray at INFO too; -vv: raydf at DEBUG."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity < 2 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in NOISY_AT_DEBUG:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    if verbosity < 1:
        # Importing ray.data resets the "ray.data" logger to DEBUG unless RAY_DATA_LOG_LEVEL says otherwise.
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
        for name, name_level in QUIET_RAY_LOGGERS.items():
            logging.getLogger(name).setLevel(name_level)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of user errors")


def config_from_args(config: Optional[str], overrides: list[str], default: Optional[str] = None) -> Config:
    """The config of a command line: `--config` (else `default`) and overrides, or with `resume=RUN_DIR` that
    run's own config plus overrides that do not change its results."""
    from raydf.config import load_config
    from raydf.runs.resume import resume_config

    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if resume:
        return resume_config(resume[-1], config, [o for o in overrides if not o.startswith("resume=")])
    return load_config(config or default, overrides)


def run_cli(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> None:
    """Run `main(args)`; a user error prints `raydf: error: ...` (no traceback) and exits non-zero."""
    setup_logging(-1 if args.quiet else args.verbose)
    signals.install()  # SIGTERM stops a command like Ctrl-C does (raydf.signals)
    try:
        code = main(args)
    except RaydfError as e:
        if args.debug:
            raise
        print(f"raydf: error: {e}", file=sys.stderr)
        if e.log_file:
            print(f"raydf: the traceback is in {e.log_file} (or rerun with --debug)", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt as e:  # a stop signal outside any step that explains how to continue
        print(f"raydf: interrupted ({signals.name(e)}); nothing is left half-written", file=sys.stderr)
        code = signals.exit_code(e)
    sys.exit(code)
