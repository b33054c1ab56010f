"""RUN_DIR/raydf.log: the run's log lines, and the traceback of whatever stopped it (kept off the console)."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

from raydf.errors import RaydfError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Copy log records (at the console's level) to `path`; on an exception, write its traceback there too.

    A user error that wraps a crash (a fold task that raised) gets `log_file` set, so the CLI can point at
    the traceback instead of printing it.
    """
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    except BaseException as e:
        # Straight to the file handler: a logger call would print the traceback on the console too.
        handler.handle(
            logging.makeLogRecord(
                {
                    "name": "raydf",
                    "levelno": logging.ERROR,
                    "levelname": "ERROR",
                    "msg": "the run stopped:",
                    "exc_info": sys.exc_info(),
                }
            )
        )
        if isinstance(e, RaydfError) and e.__cause__ is not None:
            e.log_file = str(path)
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
