"""Several folds trained in lockstep, one epoch each in turn, with one metric row per epoch (for a Tune trial).

Plain Python threads around the unchanged `raydf.training.fold_loop.train_fold`: each fold's loop runs in its
own thread, which pauses after every epoch (in `on_epoch`) until the next epoch is asked for. Only one fold computes at
a time, so the folds do not share torch's global random generator (train_fold reseeds it per epoch for
dropout) or the trial's CPU threads: each fold computes exactly what it would alone, and every epoch gets
the whole device.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Callable, Iterator, Optional

import numpy as np

from raydf.config import Config
from raydf.training.fold_loop import FoldOutcome, train_fold
from raydf.training.fold_state import FoldStateStore


class _Closed(Exception):
    """Raised inside a paused fold thread to unwind it when the trial ends early."""


class FoldStepper:
    """`train_fold` as a sequence of epochs: `next()` runs one epoch and returns its history row."""

    def __init__(self, run: Callable[[Callable[[dict], None]], FoldOutcome], name: str):
        self._run = run  # run(on_epoch) -> FoldOutcome
        self._messages: queue.Queue = queue.Queue(maxsize=1)
        self._resume = threading.Semaphore(0)
        self._closing = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.outcome: Optional[FoldOutcome] = None  # set once the fold has finished

    def _main(self) -> None:
        try:
            self._messages.put(("end", self._run(self._on_epoch)))
        except _Closed:
            pass
        except BaseException as e:  # handed to the caller's thread
            self._messages.put(("error", e))

    def _on_epoch(self, row: dict) -> None:
        self._messages.put(("row", row))
        self._resume.acquire()  # paused until next() or close()
        if self._closing:
            raise _Closed

    def next(self) -> Optional[dict]:
        """Train the next epoch; its row, or None when the fold has ended (all epochs run, or patience)."""
        if self.outcome is not None:
            return None
        if self._thread.ident is None:
            self._thread.start()
        else:
            self._resume.release()
        kind, value = self._messages.get()
        if kind == "error":
            raise value
        if kind == "end":
            self.outcome = value
            return None
        return value

    def close(self) -> None:
        """Unwind a paused fold (the trial was stopped)."""
        if self._thread.is_alive():
            self._closing = True
            self._resume.release()
            self._thread.join()


def lockstep_folds(
    images: np.ndarray,
    labels: np.ndarray,
    splits: dict[int, tuple[np.ndarray, np.ndarray]],
    cfg: Config,
    stores: dict[int, FoldStateStore],
    start_weights: Optional[dict[str, np.ndarray]] = None,
    landmarks: Optional[np.ndarray] = None,
) -> Iterator[dict]:
    """Train the folds of `splits` ({fold: (train rows, val rows)}) epoch by epoch; yield after every epoch.

    Each yield is `{"epoch", "val_loss", "val_acc", "train_loss"}`, means over the folds, and `folds_training`,
    how many folds go on to another epoch; meanwhile every fold is paused with its state saved in its
    store. A fold that stopped early (patience) counts with its best epoch, the weights training would
    keep from it. With states in the stores, the folds continue after their last saved epoch. Close the
    generator (or leave a `with contextlib.closing(...)`) to stop. `start_weights`, `landmarks`: see `train_fold`.
    """
    steppers = {
        k: FoldStepper(
            lambda on_epoch, k=k: train_fold(
                images,
                labels,
                *splits[k],
                cfg,
                k,
                on_epoch=on_epoch,
                state=stores[k],
                start_weights=start_weights,
                landmarks=landmarks,
            ),
            name=f"fold{k}",
        )
        for k in splits
    }
    try:
        while True:
            rows = {}
            for k, stepper in steppers.items():
                row = stepper.next()
                if row is not None:
                    rows[k] = row
            if not rows:
                return
            per_fold = [rows[k] if k in rows else _best_row(s.outcome) for k, s in steppers.items()]
            yield {
                "epoch": max(r["epoch"] for r in rows.values()),
                "val_loss": _mean(r["val_loss"] for r in per_fold),
                "val_acc": _mean(r["val_acc"] for r in per_fold),
                "train_loss": _mean(r["train_loss"] for r in rows.values()),
                "folds_training": sum(_goes_on(r, cfg) for r in rows.values()),
            }
    finally:
        for stepper in steppers.values():
            stepper.close()


def _goes_on(row: dict, cfg: Config) -> bool:
    # train_fold's stopping rule: epochs since the best one (its `stale` counter) reaching train.patience.
    return row["epoch"] < cfg.train.epochs and row["epoch"] - row["best_epoch"] < cfg.train.patience


def _best_row(outcome: FoldOutcome) -> dict:
    return {"val_loss": outcome.val_loss, "val_acc": outcome.val_acc}


def _mean(values) -> float:
    values = [float(v) for v in values]
    return math.fsum(values) / len(values)
