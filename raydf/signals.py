"""Stopping a long command cleanly on SIGINT (Ctrl-C) and SIGTERM (`kill`, `timeout`, Kubernetes, Slurm,
systemd, cloud preemption).

Both signals raise `Stopped` (a KeyboardInterrupt) in the main thread, so the code already written for
Ctrl-C runs for both: tasks are cancelled, `finally` blocks remove partial files, the command prints how to
continue and exits 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). A second signal during
that shutdown ends the process at once, after removing the partial files registered here.

A signal that was *ignored* when the process started stays ignored: a background job of a non-interactive
shell (`cmd &` in a script) inherits SIGINT ignored, and the Unix convention is to respect that.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Optional

HANDLED = (signal.SIGINT, signal.SIGTERM)
_TUNE_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGUSR1", None)) if s is not None)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; `exit_code` is the shell's convention for it (128 + signal number)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_inherited_ignore: Optional[set[int]] = None  # signals ignored when install() first ran
_received: Optional[int] = None  # the first stop signal of this process
_partial_files: set[str] = set()  # files being written now: removed before a second signal's hard exit
_partial_globs: set[str] = set()  # patterns of files other processes of the run may be writing
_on_hard_exit: list[Callable[[], None]] = []
_delegate_to_sigint = False


def exit_code(exc: BaseException) -> int:
    """The exit status for an interrupted command: 143 after SIGTERM, 130 after Ctrl-C."""
    return getattr(exc, "exit_code", None) or (128 + (_received or signal.SIGINT))


def name(exc: BaseException) -> str:
    """The stop signal's name for a message: a KeyboardInterrupt raised elsewhere (Ray re-raises a bare one
    inside its waits) carries none, so the signal this process received tells, else Ctrl-C's SIGINT."""
    if isinstance(exc, Stopped):
        return signal.Signals(exc.signum).name
    return signal.Signals(_received or signal.SIGINT).name


def received() -> Optional[int]:
    """The stop signal this process received first, if any."""
    return _received


def _handler(signum: int, frame) -> None:
    global _received
    if _received is not None:  # the second signal: no more waiting on clean-ups
        _hard_exit(signum)
    _received = signum
    if _delegate_to_sigint and signum != signal.SIGINT:
        # Inside a Ray Tune sweep: Tune stops gracefully (saving its state) on its own SIGINT handler.
        sigint = signal.getsignal(signal.SIGINT)
        if callable(sigint) and sigint is not _handler:
            sigint(signal.SIGINT, frame)
            return
    raise Stopped(signum)


def _hard_exit(signum: int) -> None:
    for callback in list(_on_hard_exit):
        with contextlib.suppress(Exception):
            callback()
    for path in list(_partial_files) + [p for pattern in list(_partial_globs) for p in glob.glob(pattern)]:
        with contextlib.suppress(OSError):
            os.unlink(path)
    os.write(2, f"\nraydf: second {signal.Signals(signum).name}: stopped at once\n".encode())
    os._exit(128 + (_received or signum))


def install() -> None:
    """Handle SIGINT and SIGTERM as `Stopped` (main thread only; a no-op elsewhere).

    Call it when a command starts and again after `ray.init`, which sets its own SIGTERM handler.
    """
    global _inherited_ignore
    if threading.current_thread() is not threading.main_thread():
        return
    if _inherited_ignore is None:
        _inherited_ignore = {s for s in HANDLED if signal.getsignal(s) == signal.SIG_IGN}
        # Ray's core worker installs abseil's failure signal handler (a C++ stack dump on SIGTERM) and, in
        # ray.shutdown, resets SIGTERM to its default action: a second signal during that shutdown killed the
        # process at once, with no clean-up and exit -15 (seen in the signal tests; reproduced by sending SIGTERM
        # during ray.shutdown). Ray reads the variable when it is imported, so before any command imports it.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None and os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] == "1":
            # Ray was imported first (a script, a notebook) and read the variable then; ray.init reads this copy.
            constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
        if signal.SIGINT in _inherited_ignore:  # Ray Tune installs a SIGINT handler of its own unless told not to
            os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN if sig in _inherited_ignore else _handler)


def reinstall() -> None:
    """Take the signals back after a library replaced the handlers (only if `install()` ran)."""
    if _inherited_ignore is not None:
        install()


@contextlib.contextmanager
def partial_file(path: str) -> Iterator[None]:
    """Mark `path` as being written: a second signal removes it before the hard exit."""
    _partial_files.add(path)
    try:
        yield
    finally:
        _partial_files.discard(path)


@contextlib.contextmanager
def partial_files(pattern: str) -> Iterator[None]:
    """While inside, files matching `pattern` (written by other processes, e.g. fold tasks) are partial
    writes that a second signal removes."""
    _partial_globs.add(pattern)
    try:
        yield
    finally:
        _partial_globs.discard(pattern)


@contextlib.contextmanager
def on_hard_exit(callback: Callable[[], None]) -> Iterator[None]:
    """Run `callback` (quick, e.g. kill -9 of local worker processes) if a second signal ends the process."""
    _on_hard_exit.append(callback)
    try:
        yield
    finally:
        _on_hard_exit.remove(callback)


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """While inside, SIGTERM goes to the current SIGINT handler (Ray Tune's graceful stop) when it has one.

    On the way out the SIGINT and SIGUSR1 handlers are put back as they were: Ray Tune installs its own on both
    and restores SIGINT's only when a signal arrives (ray/tune/tune.py, `_setup_signal_catching`), so after a
    sweep that ended by itself a later Ctrl-C in the same process (then_train, a notebook, a test session) only
    set Tune's stale flag and the run went on training.
    """
    global _delegate_to_sigint
    main = threading.current_thread() is threading.main_thread()
    kept = {sig: signal.getsignal(sig) for sig in _TUNE_SIGNALS} if main else {}
    _delegate_to_sigint = True
    try:
        yield
    finally:
        _delegate_to_sigint = False
        for sig, handler in kept.items():
            if handler is not None:  # None: set from C, nothing Python can put back
                signal.signal(sig, handler)
