"""What the user sees while a run works: a live bar per model (fold, or seed and fold) on a terminal, a plain line per
event otherwise.

On a terminal (stderr is a TTY) every fold gets a tqdm bar: epoch/total, train loss, val loss and
accuracy, best epoch, elapsed time and an ETA; log records are routed above the bars. Elsewhere (CI, a
log file) each event becomes one `logging` line. Both stay silent under `-q` (INFO disabled).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from raydf.runs.model_key import ModelKey

log = logging.getLogger(__name__)


def _fmt_seconds(seconds: Optional[float]) -> str:
    return "?" if seconds is None else tqdm.format_interval(max(0.0, seconds))


def _size(stream: TextIO) -> dict:
    """tqdm's size arguments: follow the terminal, or a fixed size when the terminal reports none."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    if columns > 0:
        return {"dynamic_ncols": True}
    # A pseudo-terminal without a size (e.g. under `script`) reports 0 x 0, and tqdm then hides every bar.
    size = shutil.get_terminal_size((120, 24))
    return {"ncols": size.columns, "nrows": size.lines}


def _use_bars(stream: TextIO, live: Optional[bool]) -> bool:
    if live is not None:
        return live
    return hasattr(stream, "isatty") and stream.isatty()


@dataclass
class _FoldState:
    epochs: int
    status: str = "waiting to start"
    attempts: int = 0
    epoch: int = 0
    row: Optional[dict] = None
    started: Optional[float] = None  # driver clock: when the start event arrived
    last_seen: Optional[float] = None  # driver clock: when the last epoch event arrived
    per_epoch: Optional[float] = None  # worker clock: mean seconds per epoch so far (set-up included)
    worker_start: Optional[float] = None  # worker clock: when this attempt started
    worker_first_start: Optional[float] = None  # worker clock: when the first attempt started
    first_epoch: int = 0  # the last completed epoch when this attempt started (a retry resumes after it)
    done: Optional[dict] = None

    def eta(self, now: float) -> Optional[float]:
        """Seconds left if the fold runs all its epochs (early stopping may end it sooner)."""
        if self.done:
            return 0.0
        if self.per_epoch is None:
            return None
        left = self.epochs - self.epoch
        # The epoch under way counts down from its average; if it overruns, the epochs after it still remain.
        return max(self.per_epoch * left - (now - self.last_seen), self.per_epoch * (left - 1), 0.0)

    def elapsed(self, now: float) -> Optional[float]:
        if self.started is None:
            return None
        if self.done:
            return self.done["time"] - self.worker_first_start
        return now - self.started


class FoldProgress:
    """Consumes progress events (`start`, `epoch`, `done`; see `raydf.distributed.folds.run_folds`).

    Use as a context manager and call it with each batch of events (an empty batch just ticks the clock).
    `folds`: the run's models (`ModelKey`s), or a number of folds (one seed); events name theirs by
    `ModelKey.tags()`.
    """

    def __init__(
        self,
        folds: int | Sequence[ModelKey],
        epochs: int,
        *,
        live: Optional[bool] = None,
        stream: Optional[TextIO] = None,
    ):
        self.stream = stream or sys.stderr
        self.enabled = log.isEnabledFor(logging.INFO)
        self.live = self.enabled and _use_bars(self.stream, live)
        keys = [ModelKey(k, 0) for k in range(folds)] if isinstance(folds, int) else list(folds)
        self._seed = keys[0].seed if keys else 0  # what a key read from an event without a seed gets
        self.folds = {k: _FoldState(epochs) for k in keys}
        self._bars: dict[ModelKey, tqdm] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> FoldProgress:
        if self.live:
            self._stack.enter_context(logging_redirect_tqdm())  # log lines print above the bars, not through them
            for i, (k, state) in enumerate(self.folds.items()):
                self._bars[k] = tqdm(
                    total=state.epochs,
                    desc=k.label,
                    position=i,
                    file=self.stream,
                    leave=True,
                    bar_format="{desc} {bar:12} {n_fmt}/{total_fmt} epochs{postfix}",
                    **_size(self.stream),
                )
            self._refresh()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self._refresh()
        for bar in self._bars.values():  # top to bottom, so the final lines stay in fold order
            bar.close()
        self._stack.close()

    def __call__(self, events: list[dict]) -> None:
        now = time.time()
        for event in events:
            key = ModelKey.of(event, self._seed)
            state = self.folds.get(key)
            if state is None:
                continue
            self._apply(state, event, now)
            if self.enabled and not self.live:
                log.info(self._line(key.label, state, event, now))
        if self.live:
            self._refresh(now)

    @staticmethod
    def _apply(state: _FoldState, event: dict, now: float) -> None:
        kind = event["type"]
        if kind == "start":
            # A retried fold resumes after its last saved epoch (every reported epoch was saved first), so the
            # bar keeps its epochs; the ETA is measured again from this attempt's own epochs.
            state.attempts += 1
            state.status = "starting" if state.attempts == 1 else f"attempt {state.attempts}: resuming"
            state.per_epoch, state.done, state.first_epoch = None, None, state.epoch
            state.worker_start = event["time"]
            state.worker_first_start = state.worker_first_start or event["time"]
            state.started = state.started or now
            state.epochs = event.get("epochs", state.epochs)
        elif kind == "epoch":
            state.status, state.epoch, state.row, state.last_seen = "training", event["epoch"], event, now
            if state.worker_start is not None and event["epoch"] > state.first_epoch:
                state.per_epoch = (event["time"] - state.worker_start) / (event["epoch"] - state.first_epoch)
        elif kind == "done":
            state.status, state.done = "done", event

    def _line(self, name: str, state: _FoldState, event: dict, now: float) -> str:
        """One plain log line for one event of the model `name` (`fold 3`, `seed 7 fold 3`)."""
        kind = event["type"]
        if kind == "start":
            retry = (
                f", attempt {state.attempts}, resuming after epoch {state.first_epoch}" if state.attempts > 1 else ""
            )
            node = str(event.get("node_id", "?"))[:8]
            return f"{name} started (node {node}, pid {event.get('pid', '?')}{retry})"
        if kind == "epoch":
            return (
                f"{name} epoch {event['epoch']}/{state.epochs}: train loss {event['train_loss']:.4f} | "
                f"val loss {event['val_loss']:.4f} acc {event['val_acc']:.3f} | best epoch {event['best_epoch']} "
                f"| {event['seconds']:.1f}s this epoch | ETA {_fmt_seconds(state.eta(now))}"
            )
        return (
            f"{name} done: best epoch {event['best_epoch']}, val loss {event['val_loss']:.4f}, "
            f"val acc {event['val_acc']:.3f} ({event['epochs_run']} epochs, {_fmt_seconds(state.elapsed(now))})"
        )

    def _postfix(self, state: _FoldState, now: float) -> str:
        if state.done:
            d = state.done
            return (
                f"done: best epoch {d['best_epoch']}, val loss {d['val_loss']:.4f} acc {d['val_acc']:.3f} "
                f"| {d['epochs_run']} epochs in {_fmt_seconds(state.elapsed(now))}"
            )
        if state.row is None:
            return state.status
        r = state.row
        # The ETA and validation numbers first: an 80-column terminal cuts the line after them.
        return (
            f"ETA {_fmt_seconds(state.eta(now))} | val loss {r['val_loss']:.4f} acc {r['val_acc']:.3f} "
            f"| train loss {r['train_loss']:.4f} | best epoch {r['best_epoch']} "
            f"| elapsed {_fmt_seconds(state.elapsed(now))}"
        )

    def _refresh(self, now: Optional[float] = None) -> None:
        now = now or time.time()
        for k, bar in self._bars.items():
            state = self.folds[k]
            bar.n = state.epoch
            bar.set_postfix_str(self._postfix(state, now), refresh=False)
            bar.refresh()


class CountProgress:
    """Progress of a count (e.g. images predicted): a tqdm bar on a terminal, a log line every `every` s otherwise."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "images",
        *,
        live: Optional[bool] = None,
        stream: Optional[TextIO] = None,
        every: float = 10.0,
    ):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream or sys.stderr
        self.enabled = log.isEnabledFor(logging.INFO)
        self.live = self.enabled and _use_bars(self.stream, live)
        self.n = 0
        self._bar: Optional[tqdm] = None
        self._stack = contextlib.ExitStack()
        self._start = self._last_log = time.time()

    def __enter__(self) -> CountProgress:
        if self.live:
            self._stack.enter_context(logging_redirect_tqdm())
            self._bar = self._stack.enter_context(
                tqdm(total=self.total, desc=self.desc, unit=f" {self.unit}", file=self.stream, **_size(self.stream))
            )
        return self

    def update(self, n: int) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            now = time.time()
            if now - self._last_log >= self.every or self.n >= self.total:
                self._last_log = now
                rate = self.n / max(now - self._start, 1e-9)
                log.info(
                    "%s: %d/%d %s (%.0f%%), %.1f %s/s",
                    self.desc,
                    self.n,
                    self.total,
                    self.unit,
                    100 * self.n / max(self.total, 1),
                    rate,
                    self.unit,
                )

    def __exit__(self, *exc) -> None:
        self._stack.close()
