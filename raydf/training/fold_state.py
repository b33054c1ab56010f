"""A fold's resumable state, saved after every epoch so a crash loses at most the epoch in progress."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

from raydf.runs.model_key import ModelKey, model_name
from raydf.runs.storage import RunStorage

log = logging.getLogger(__name__)

STATE_KEYS = {"epoch", "model", "optimizer", "scheduler", "scaler", "best", "history", "stale"}


class FoldStateStore:
    """`state/fold{k}.pt` (latest epoch) and `state/fold{k}.prev.pt` (the one before) in the run storage
    (`state/s{seed}_fold{k}.*` for a model of a run of several seeds: `fold` is then its `ModelKey`).

    Two generations on a file system: if the latest file is unreadable (a disk filled up, someone truncated
    it), the fold resumes from the previous epoch instead of from scratch. On an object store only the latest.
    """

    def __init__(self, storage: RunStorage, fold: int | ModelKey):
        self.storage, self.fold = storage, fold
        self.name = model_name(fold)
        self.current, self.previous = f"state/{self.name}.pt", f"state/{self.name}.prev.pt"
        self.attempt_file = f"state/{self.name}.attempt.json"

    def save(self, state: dict[str, Any]) -> None:
        # On an object store the upload replaces the latest state whole or not at all, so it is never half
        # written, and keeping the one before would cost a move: a server-side copy of hundreds of MB per epoch,
        # then a delete (not atomic either).
        if self.storage.local and self.storage.exists(self.current):
            self.storage.move(self.current, self.previous)
        self.storage.save_torch(self.current, state)

    def load(self) -> Optional[dict[str, Any]]:
        """The newest readable state, or None (start from scratch). Unreadable files are reported, not fatal."""
        for rel in (self.current, self.previous):
            if not self.storage.exists(rel):
                continue
            try:
                state = self.storage.load_torch(rel)
                missing = STATE_KEYS - set(state)
                if missing:
                    raise ValueError(f"missing {sorted(missing)}")
                return state
            except Exception as e:  # truncated zip, wrong file, unpickling refused: all mean "not usable"
                log.warning(
                    "%s: state file %s is unreadable (%s: %s); falling back to an older state",
                    self.fold.label if isinstance(self.fold, ModelKey) else f"fold {self.fold}",
                    self.storage.path(rel),
                    type(e).__name__,
                    e,
                )
        return None

    def remove_partial_writes(self) -> None:
        """Delete this fold's temp files that a killed writer left (`*.tmp`: never read, up to 300 MB each).

        Only while no attempt of the fold is running: at the start of an attempt, or after the driver ended one.
        """
        prefix = f"{self.name}."  # fold1. never matches s7_fold1.: names start with their own prefix
        for name in self.storage.listdir("state"):
            if name.startswith(prefix) and name.endswith(".tmp"):
                self.storage.delete(f"state/{name}")

    def begin_attempt(self, **info: Any) -> dict[str, Any]:
        """Count this attempt (Ray retries a fold whose worker died) and remember when the first one began."""
        self.remove_partial_writes()  # the previous attempt may have been killed while saving
        record = {"attempts": 0, "first_started_at": time.time()}
        if self.storage.exists(self.attempt_file):
            try:
                record.update(json.loads(self.storage.read_text(self.attempt_file)))
            except (ValueError, OSError):
                pass
        record.update(info, attempts=record["attempts"] + 1, started_at=time.time())
        self.storage.write_text(self.attempt_file, json.dumps(record))
        return record


def start_attempt(
    storage: Optional[RunStorage], key: int | ModelKey, **info: Any
) -> tuple[Optional[FoldStateStore], dict[str, Any]]:
    """A fold task's first step: its state store (None without a run directory) and this attempt's record."""
    if storage is None:
        return None, {"attempts": 1, "first_started_at": time.time()}
    state = FoldStateStore(storage, key)
    return state, state.begin_attempt(**info)
