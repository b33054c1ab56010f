"""Errors a user can cause. The CLI prints them as one clear message (no traceback) and exits non-zero."""

from __future__ import annotations

from typing import Optional


class RaydfError(Exception):
    """Base class of every error caused by the user's input (config, data, command line)."""

    exit_code = 2
    log_file: Optional[str] = None  # where the traceback was written, when the error wraps a crash


class Interrupted(RaydfError):
    """A stop signal (Ctrl-C, SIGTERM) ended a command cleanly; the message says how to continue.

    `exit_code` follows the shell's convention for the signal: 130 (SIGINT) or 143 (SIGTERM).
    """

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(RaydfError):
    """A config key is unknown, has the wrong type, or an invalid value. The message names the key."""


class DataError(RaydfError):
    """A data table, file or image cannot be used. The message names the file (and row) and what to do."""


def find_user_error(exc: BaseException) -> Optional[RaydfError]:
    """The RaydfError behind `exc`, if any: raised on a worker, it arrives wrapped (Ray's `.cause`, `__cause__`)."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        # Ray's RayTaskError is also made an instance of the worker's exception class; its own message is the
        # remote traceback, so the original exception (`.cause`) is the one to show.
        if isinstance(e, RaydfError) and not isinstance(cause, BaseException):
            return e
        todo += [cause, e.__cause__, e.__context__]
    return None
