"""`python -m raydf.serve --run RUN_DIR [--host 127.0.0.1] [--port 8000] [key=value ...]`: a finished run's fold
models behind an HTTP API (`POST /predict`, `GET /health`, docs at `/docs`) and a web page at `/`, on Ray Serve."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from raydf import signals
from raydf.cli import add_common_args, run_cli
from raydf.errors import Interrupted
from raydf.pipelines.serving import serve_run


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.serve", description=__doc__)
    parser.add_argument("--run", required=True, help="a finished run directory (has checkpoints/*fold*.pt)")
    parser.add_argument("--host", help="address to listen on (default: serve.host, 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, help="TCP port (default: serve.port, 8000)")
    parser.add_argument("--address", help="Ray address of a running cluster (default: the run's ray.address)")
    parser.add_argument("overrides", nargs="*", help="serve.* (and ray.*) settings as key=value")
    add_common_args(parser)
    return parser.parse_intermixed_args(argv)  # key=value pairs on both sides of a flag (-q, -v)


def main(args: argparse.Namespace) -> int:
    def ready(url: str) -> None:
        print(f"raydf: serving {args.run} at {url} (web page; API docs at {url}docs). Ctrl-C stops.", flush=True)

    try:
        serve_run(args.run, args.overrides, args.host, args.port, args.address, on_ready=ready)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM (raydf.signals): the normal way to stop a server
        raise Interrupted(f"stopped serving {args.run} ({signals.name(stop)})", signals.exit_code(stop)) from None
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
