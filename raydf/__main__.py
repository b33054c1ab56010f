"""`python -m raydf` is `python -m raydf.train`."""

from raydf.cli import run_cli
from raydf.train import main, parse_args

run_cli(main, parse_args())
