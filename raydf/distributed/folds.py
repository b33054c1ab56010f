"""One Ray task per model (fold x seed), all submitted at once, collected as they finish."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import time
from dataclasses import asdict
from typing import Callable, Iterable, Optional

import numpy as np
import ray
import torch

from raydf import signals
from raydf.config import Config
from raydf.data.cache import DecodedCache
from raydf.distributed import ddp_fold
from raydf.distributed.data import ImagesHandle, resolve_images
from raydf.distributed.progress import EventSender, drain, start_progress_actor
from raydf.distributed.stop import StopPoller, start_stop_flag
from raydf.errors import RaydfError, find_user_error
from raydf.runs.model_key import ModelKey, as_key
from raydf.runs.storage import RunStorage
from raydf.training.fold_loop import train_fold
from raydf.training.fold_state import FoldStateStore, start_attempt

log = logging.getLogger(__name__)


@ray.remote(num_returns=2)
def _fold_task(
    images: np.ndarray | DecodedCache,
    labels: np.ndarray,
    key: ModelKey,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: Config,
    storage: Optional[RunStorage],
    progress: Optional[ray.actor.ActorHandle] = None,
    start_weights: Optional[dict[str, np.ndarray]] = None,
    stop_flag: Optional[ray.actor.ActorHandle] = None,
    landmarks: Optional[np.ndarray] = None,
) -> tuple[dict[str, np.ndarray], dict]:
    # `images` arrives as a zero-copy, read-only view of the object store, or names the node's memory-mapped
    # cache file: either way every fold on a node shares one copy.
    # Ray re-runs this task when its worker dies (max_retries); the state store makes the rerun resume.
    ctx = ray.get_runtime_context()
    state, attempt = start_attempt(storage, key, pid=os.getpid(), node_id=ctx.get_node_id())
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_fold)))  # a fraction of a CPU: one thread
    images = resolve_images(images)
    events = EventSender(progress)
    events.send(
        {
            "type": "start",
            **key.tags(),  # fold, and seed in a run of several seeds
            "time": time.time(),
            "epochs": cfg.train.epochs,
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
            "attempt": attempt["attempts"],
        }
    )

    def on_epoch(row: dict) -> None:
        log.debug("%s epoch %d: %s", key.label, row["epoch"], row)
        events.send({"type": "epoch", "time": time.time(), "epochs": cfg.train.epochs, **row})

    try:
        outcome = train_fold(
            images,
            labels,
            train_idx,
            val_idx,
            cfg,
            key,
            on_epoch=on_epoch,
            state=state,
            start_weights=start_weights,
            should_stop=StopPoller(stop_flag),
            landmarks=landmarks,
        )
    finally:
        events.flush()  # the driver sees every epoch before it sees the fold finish
    info = asdict(outcome)
    del info["weights"]  # returned as its own object so inference actors can fetch it alone
    info.update(
        **key.tags(),
        val_index=np.asarray(val_idx),
        started_at=attempt["first_started_at"],
        finished_at=time.time(),
        node_id=ctx.get_node_id(),
        pid=os.getpid(),
        gpu_ids=[str(g) for g in ray.get_gpu_ids()],
        attempts=attempt["attempts"],
        # This worker's peak resident memory (MB), shared pages it touched included (object store, memory maps).
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return outcome.weights, info


class FoldFailed(RaydfError):
    """A fold task raised; the message carries the fold and the worker's error (its traceback stays in the log)."""


def _describe(e: ray.exceptions.RayError) -> str:
    """One line for a failed task: a user error's own message, else the worker exception's type and first line."""
    user = find_user_error(e)
    if user is not None:
        return str(user)
    cause = getattr(e, "cause", None)  # RayTaskError: the exception the task raised
    if isinstance(cause, BaseException):
        first = (str(cause).strip().splitlines() or [""])[0]
        return f"{type(cause).__name__}: {first}"
    return (str(e).strip().splitlines() or [type(e).__name__])[0]  # e.g. the worker died (out of memory)


def run_folds(
    images_ref: ImagesHandle,
    labels_ref: ray.ObjectRef,
    splits: dict[ModelKey | int, tuple[np.ndarray, np.ndarray]],
    cfg: Config,
    resources: dict[str, float],
    storage: Optional[RunStorage] = None,
    on_done: Optional[Callable[[dict, ray.ObjectRef], None]] = None,
    on_events: Optional[Callable[[list[dict]], None]] = None,
    poll_seconds: float = 0.5,
    start_weights_ref: Optional[ray.ObjectRef] = None,
    landmarks_ref: Optional[ray.ObjectRef] = None,
) -> dict[ModelKey | int, tuple[ray.ObjectRef, dict]]:
    """Train the models `splits` ({key: (train rows, val rows)}: a fold and its seed, or a bare fold index for the
    run's first seed) at once; returns {key: (best-weights ref, info)}. The models of one fold share its rows and
    differ in their seed.

    With `storage` (the run directory) every fold saves its state per epoch and resumes from it when Ray
    retries it. `on_done(info, weights_ref)` runs on the driver as each fold finishes (completion order).
    `on_events(events)` runs on the driver every `poll_seconds` with the progress events that arrived
    (possibly none, so a display can tick): `start` and `epoch` events from the fold tasks, then a `done`
    event per model after its `on_done`. Events, like the infos, carry the model's `ModelKey.tags()`.
    `start_weights_ref`: the fitted start weights, put once (every fold's worker maps the same copy);
    `landmarks_ref`, the rows' face landmarks (N, 5, 2) for the self-blended fakes' masks, likewise.
    """
    # SPREAD: Ray's default policy prefers the node that holds a task's arguments (the driver's, where the
    # decoded images are) until that node is half busy; on a 3-node ray.cluster_utils.Cluster it put two
    # 1-CPU folds both on the head while the workers idled, SPREAD put them on two nodes. (GPU folds with
    # one GPU per node land on separate nodes either way.)
    # The images cross the network once per node, not once per fold: a raylet pulls an object only if it is
    # not already in its node's object store (one pull per object id: src/ray/object_manager/pull_manager.h),
    # and every worker on the node maps that one copy read-only (docs: ray-core/objects, serialization).
    task = _fold_task.options(max_retries=cfg.ray.max_retries, scheduling_strategy="SPREAD", **resources)
    task = ddp_fold.fold_task(cfg) or task  # data-parallel folds: Ray Train (raydf.distributed.ddp_fold)
    progress = start_progress_actor() if on_events else None
    stop_flag = start_stop_flag()
    submitted = {}
    keys = {k: as_key(k, cfg) for k in splits}
    for k, (train_idx, val_idx) in splits.items():
        weights_ref, info_ref = task.remote(
            images_ref,
            labels_ref,
            keys[k],
            train_idx,
            val_idx,
            cfg,
            storage,
            progress,
            start_weights_ref,
            stop_flag,
            landmarks=landmarks_ref,
        )
        submitted[info_ref] = (k, weights_ref)
    log.info("submitted %d fold tasks (%g CPU, %g GPU each)", len(splits), resources["num_cpus"], resources["num_gpus"])
    results: dict[ModelKey | int, tuple[ray.ObjectRef, dict]] = {}
    pending = list(submitted)
    # A second Ctrl-C/SIGTERM exits at once: first kill this node's fold workers, then remove their temp files.
    kill_local = lambda: _kill_local_fold_workers(storage, splits.keys() - results.keys())  # noqa: E731
    state_tmp = str(storage.local_path("state") / "*.tmp") if storage is not None and storage.local else ""
    with signals.on_hard_exit(kill_local), signals.partial_files(state_tmp):
        return _collect(
            submitted, pending, results, keys, storage, on_done, on_events, progress, stop_flag, poll_seconds
        )


def _collect(
    submitted: dict,
    pending: list,
    results: dict,
    keys: dict,
    storage: Optional[RunStorage],
    on_done: Optional[Callable],
    on_events: Optional[Callable],
    progress,
    stop_flag: ray.actor.ActorHandle,
    poll_seconds: float,
) -> dict:
    """Wait for the fold tasks (see `run_folds`; `keys`: {the caller's key: its ModelKey}); stop what still runs
    when leaving early."""
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
                raise FoldFailed(f"{keys[k].label} failed: {_describe(e)}") from e
            results[k] = (weights_ref, info)
            if on_done:
                on_done(info, weights_ref)
            if progress is not None:
                on_events(
                    [
                        {
                            "type": "done",
                            **keys[k].tags(),
                            "time": info["finished_at"],
                            **{key: info[key] for key in ("best_epoch", "val_loss", "val_acc", "epochs_run")},
                        }
                    ]
                )
    finally:
        _stop(pending, stop_flag)  # on error or Ctrl-C, do not leave folds training in the background
        if len(results) < len(keys):
            _fetch_errors(pending + [w for k, w in submitted.values() if k not in results])
            if storage is not None:  # the cancelled tasks are gone now: no temp file they were writing stays
                for k in keys.keys() - results.keys():
                    FoldStateStore(storage, k).remove_partial_writes()
        del progress, stop_flag  # the actors end with their last handle (no ray.kill: a worker may still hold one)
    return {k: results[k] for k in keys if k in results}  # in the order of `splits`


def _stop(refs: list[ray.ObjectRef], stop_flag: ray.actor.ActorHandle, grace_s: float = 30.0) -> None:
    """Stop the fold tasks of `refs`: set the flag they poll between batches (each ends within a batch), then
    cancel (force) only those still running after `grace_s`, e.g. one still waiting for a node.

    Not `ray.cancel` first: see `raydf.distributed.stop`.
    """
    if not refs:
        return
    try:
        ray.get(stop_flag.set.remote(), timeout=10)
        _, running = ray.wait(refs, num_returns=len(refs), timeout=grace_s)
    except (ray.exceptions.RayError, TimeoutError):
        running = refs
    for ref in running:
        ray.cancel(ref, force=True)


def _kill_local_fold_workers(storage: Optional[RunStorage], folds: Iterable[ModelKey | int]) -> None:
    """SIGKILL the worker processes of the models `folds` that run on this node (their pids are in the fold state)."""
    if storage is None:
        return
    here = ray.get_runtime_context().get_node_id()
    for k in folds:
        try:
            attempt = json.loads(storage.read_text(FoldStateStore(storage, k).attempt_file))
            if attempt.get("node_id") == here and attempt.get("pid"):
                os.kill(int(attempt["pid"]), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _fetch_errors(refs: list[ray.ObjectRef]) -> None:
    """Fetch and drop the outcome of failed or cancelled tasks: Ray prints a traceback ("Unhandled error")
    for every error object nobody fetched, and the error has already been reported in one line."""
    for ref in refs:
        try:
            ray.get(ref, timeout=5)
        except Exception:  # noqa: BLE001 (the failure being discarded)
            pass
