"""One Ray task per fold, all submitted at once, collected as they finish."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import Callable, Optional

import numpy as np
import ray
import torch

from raydf.config import Config
from raydf.distributed.progress import EventSender, drain, start_progress_actor
from raydf.errors import RaydfError
from raydf.fold import train_fold

log = logging.getLogger(__name__)


@ray.remote(num_returns=2)
def _fold_task(images: np.ndarray, labels: np.ndarray, fold: int, train_idx: np.ndarray, val_idx: np.ndarray,
               cfg: Config, progress: Optional[ray.actor.ActorHandle] = None) -> tuple[dict[str, np.ndarray], dict]:
    # `images` arrives as a zero-copy, read-only view of the object store: every fold on a node shares it.
    started_at = time.time()
    torch.set_num_threads(cfg.resources.cpus_per_fold)
    ctx = ray.get_runtime_context()
    events = EventSender(progress)
    events.send({"type": "start", "fold": fold, "time": started_at, "epochs": cfg.train.epochs,
                 "node_id": ctx.get_node_id(), "pid": os.getpid()})

    def on_epoch(row: dict) -> None:
        log.debug("fold %d epoch %d: %s", fold, row["epoch"], row)
        events.send({"type": "epoch", "time": time.time(), "epochs": cfg.train.epochs, **row})

    try:
        outcome = train_fold(images, labels, train_idx, val_idx, cfg, fold, on_epoch=on_epoch)
    finally:
        events.flush()  # the driver sees every epoch before it sees the fold finish
    info = asdict(outcome)
    del info["weights"]  # returned as its own object so inference actors can fetch it alone
    info.update(fold=fold, val_index=np.asarray(val_idx), started_at=started_at, finished_at=time.time(),
                node_id=ctx.get_node_id(), pid=os.getpid(), gpu_ids=[str(g) for g in ray.get_gpu_ids()],
                attempts=1, resumed_from_epoch=None)
    return outcome.weights, info


class FoldFailed(RaydfError):
    """A fold task raised; the message carries the fold and the worker's error."""


def run_folds(images_ref: ray.ObjectRef, labels_ref: ray.ObjectRef, splits: list[tuple[np.ndarray, np.ndarray]],
              cfg: Config, resources: dict[str, float],
              on_done: Optional[Callable[[dict, ray.ObjectRef], None]] = None,
              on_events: Optional[Callable[[list[dict]], None]] = None,
              poll_seconds: float = 0.5) -> list[tuple[ray.ObjectRef, dict]]:
    """Train every fold at once; returns (best-weights ref, info) per fold, in fold order.

    `on_done(info, weights_ref)` runs on the driver as each fold finishes (completion order).
    `on_events(events)` runs on the driver every `poll_seconds` with the progress events that arrived
    (possibly none, so a display can tick): `start` and `epoch` events from the fold tasks, then a `done`
    event per fold after its `on_done`.
    """
    task = _fold_task.options(max_retries=cfg.ray.max_retries, **resources)
    progress = start_progress_actor() if on_events else None
    submitted = {}
    for k, (train_idx, val_idx) in enumerate(splits):
        weights_ref, info_ref = task.remote(images_ref, labels_ref, k, train_idx, val_idx, cfg, progress)
        submitted[info_ref] = (k, weights_ref)
    log.info("submitted %d fold tasks (%g CPU, %g GPU each)", len(splits), resources["num_cpus"],
             resources["num_gpus"])
    results: dict[int, tuple[ray.ObjectRef, dict]] = {}
    pending = list(submitted)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=poll_seconds if progress is not None else None)
            if progress is not None:
                on_events(drain(progress))
            if not done:
                continue
            k, weights_ref = submitted[done[0]]
            try:
                info = ray.get(done[0])
            except ray.exceptions.RayError as e:
                raise FoldFailed(f"fold {k} failed: {e}") from e
            results[k] = (weights_ref, info)
            if on_done:
                on_done(info, weights_ref)
            if progress is not None:
                on_events([{"type": "done", "fold": k, "time": info["finished_at"],
                            **{key: info[key] for key in ("best_epoch", "val_loss", "val_acc", "epochs_run")}}])
    finally:
        for ref in pending:  # on error or Ctrl-C, do not leave folds training in the background
            ray.cancel(ref, force=True)
        del progress  # the actor ends with its last handle (no ray.kill: a worker may still hold one)
    return [results[k] for k in sorted(results)]
