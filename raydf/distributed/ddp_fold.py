"""Data-parallel folds: one fold trained by several workers with PyTorch DDP, on Ray Train (`TorchTrainer`).

`resources.gpus_per_fold` > 1 (one worker per GPU, NCCL) or `resources.workers_per_fold` > 1 on CPUs (gloo). Each
fold is a zero-CPU driver task that runs a `TorchTrainer`: the task holds no CPU while its workers wait for theirs
(on a 2-CPU machine a driver holding one would leave its two workers waiting forever), and Ray Train's controller
takes none either. The workers run the plain fold loop (`raydf.training.fold_loop.train_fold` with a
`raydf.training.data_parallel.DataParallel`); rank 0 sends the progress events and hands the best weights back as
the trainer's return value, so the driver task returns them as a plain fold task does (weights, info).

Placement: the fold's workers are one placement group, STRICT_PACK (one node) when a node can hold them all, else
PACK with a warning; a fold asking for more workers (GPUs) than any node has is refused before the pre-flight
(`check_data_parallel`).
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np
import ray
import torch

from raydf.config import Config, data_parallel_workers
from raydf.distributed.cluster import alive_nodes
from raydf.distributed.data import resolve_images
from raydf.distributed.progress import EventSender
from raydf.distributed.session import RaySession
from raydf.distributed.stop import StopPoller
from raydf.errors import ConfigError, find_user_error
from raydf.runs.model_key import ModelKey
from raydf.runs.storage import RunStorage
from raydf.training.data_parallel import DataParallel
from raydf.training.engine import StopRequested
from raydf.training.fold_loop import train_fold
from raydf.training.fold_state import FoldStateStore, start_attempt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerPlan:
    """How a data-parallel fold runs: `workers` processes of `cpus` CPUs and `gpus` (0 or 1) GPU each, placed
    with `strategy`, reducing with `backend`."""

    workers: int
    cpus: float
    gpus: int
    strategy: str  # STRICT_PACK (one node) or PACK
    backend: str  # nccl on GPUs, gloo on CPUs


def plan_workers(
    cfg: Config, nodes: Optional[list[dict[str, float]]] = None, warn: bool = True
) -> Optional[WorkerPlan]:
    """The plan of a data-parallel fold on the cluster's `nodes` (alive ones by default); None for a plain fold.

    Refuses (ConfigError, naming the key and the largest node) a fold with more workers than any node has GPUs
    (or CPUs, on CPUs); `resources.sync_bn` on CPUs (torch's SyncBatchNorm runs on GPUs only).
    """
    workers = data_parallel_workers(cfg)
    if workers <= 1:
        return None
    nodes = alive_nodes() if nodes is None else nodes
    r = cfg.resources
    max_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    gpus = 1 if (r.gpus_per_fold is None and max_gpu >= 1) or (r.gpus_per_fold or 0) > 1 else 0
    key = "resources.gpus_per_fold" if r.workers_per_fold is None else "resources.workers_per_fold"
    kind = "GPU" if gpus else "CPU"
    largest = max(nodes, key=lambda n: n.get(kind, 0), default={})
    # A worker needs a GPU, or on CPUs at least a CPU's share (cpus_per_fold; fractions share a core).
    need = workers if gpus else workers * min(r.cpus_per_fold, 1)
    if need > largest.get(kind, 0):
        raise ConfigError(
            f"{key}={workers} asks for {workers} workers of one data-parallel fold, "
            f"{'one GPU each' if gpus else 'at least one CPU each'}, but the "
            f"largest node of the Ray cluster has {largest.get(kind, 0):g} {kind}(s) "
            f"({largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU): lower {key} to at most "
            f"{largest.get(kind, 0):g}, or add larger nodes"
        )
    if r.sync_bn and not gpus:
        raise ConfigError("resources.sync_bn=true needs GPU workers (torch's SyncBatchNorm runs on GPUs only)")
    fits = any(n.get("CPU", 0) >= workers * r.cpus_per_fold and n.get("GPU", 0) >= workers * gpus for n in nodes)
    if not fits and warn:
        log.warning(
            "no node of the Ray cluster holds all %d workers of a fold (%g CPU%s each): placing them with PACK, "
            "over several nodes (every step's all-reduce then crosses the network); lower resources.cpus_per_fold "
            "to keep a fold on one node",
            workers,
            r.cpus_per_fold,
            " and 1 GPU" if gpus else "",
        )
    return WorkerPlan(workers, r.cpus_per_fold, gpus, "STRICT_PACK" if fits else "PACK", "nccl" if gpus else "gloo")


def check_data_parallel(cfg: Config, session: Optional[RaySession] = None) -> None:
    """Refuse, before the pre-flight, a data-parallel fold that no node of the cluster can hold (see plan_workers).

    On a running cluster whose autoscaler may still start larger nodes (`ray.scale_up_timeout_s` > 0) a fold that
    does not fit yet is only reported here: the fold tasks check again once the autoscaler has had its time.
    """
    if data_parallel_workers(cfg) <= 1:
        return
    try:
        plan_workers(cfg, warn=False)  # the fold tasks warn when they are placed
    except ConfigError as e:
        if session is None or not session.existing_cluster or cfg.ray.scale_up_timeout_s <= 0:
            raise
        log.warning("%s; checked again after waiting up to %gs for the autoscaler", e, cfg.ray.scale_up_timeout_s)


def fold_task(cfg: Config) -> Optional[DataParallelFold]:
    """What `raydf.distributed.folds.run_folds` submits for each fold: None for a plain fold task."""
    plan = plan_workers(cfg)
    return None if plan is None else DataParallelFold(cfg, plan)


class DataParallelFold:
    """Submits a data-parallel fold with the arguments of a plain fold task (`folds._fold_task`)."""

    def __init__(self, cfg: Config, plan: WorkerPlan):
        self.plan = plan
        # The driver task's own retries: when its process dies, the rerun resumes from the fold's saved state.
        self.task = _ddp_fold_task.options(max_retries=cfg.ray.max_retries)

    def remote(
        self,
        images: Any,
        labels: Any,
        key: ModelKey,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        cfg: Config,
        storage: Optional[RunStorage],
        progress: Optional[ray.actor.ActorHandle] = None,
        start_weights: Any = None,
        stop_flag: Optional[ray.actor.ActorHandle] = None,
        landmarks: Any = None,
    ) -> list[ray.ObjectRef]:
        # References inside a dict are not resolved for the driver task: the workers fetch the images themselves
        # (zero-copy on their node), not a copy pickled into the trainer's config.
        refs = {"images": images, "labels": labels, "start_weights": start_weights, "landmarks": landmarks}
        return self.task.remote(refs, key, train_idx, val_idx, cfg, storage, progress, stop_flag, self.plan)


def _fetch(value: Any) -> Any:
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def _worker_loop(config: dict) -> Optional[dict]:
    """One rank of a data-parallel fold, in a Ray Train worker (the process group is set up)."""
    import ray.train
    from ray.train.torch import get_device

    cfg: Config = config["cfg"]
    key, refs = config["key"], config["refs"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_fold)))  # a fraction of a CPU: one thread
    dp = DataParallel(rank, world, get_device(), cfg.resources.sync_bn)
    if dp.device.type == "cuda":  # NCCL's object collectives use the current device (Ray Train sets it too)
        torch.cuda.set_device(dp.device)
    node_id = ray.get_runtime_context().get_node_id()
    worker_nodes = dp.gather(node_id)
    events = EventSender(config["progress"] if dp.is_main else None)
    events.send(
        {
            "type": "start",
            **key.tags(),
            "time": time.time(),
            "epochs": cfg.train.epochs,
            "node_id": node_id,
            "pid": os.getpid(),
            "attempt": config["attempt"],
            "workers": world,
        }
    )
    storage = config["storage"]

    def on_epoch(row: dict) -> None:
        events.send({"type": "epoch", "time": time.time(), "epochs": cfg.train.epochs, **row})

    try:
        outcome = train_fold(
            resolve_images(_fetch(refs["images"])),
            _fetch(refs["labels"]),
            config["train_idx"],
            config["val_idx"],
            cfg,
            key,
            on_epoch=on_epoch,
            state=FoldStateStore(storage, key) if storage else None,
            start_weights=_fetch(refs["start_weights"]),
            should_stop=StopPoller(config["stop_flag"]),
            landmarks=_fetch(refs["landmarks"]),
            data_parallel=dp,
        )
    except StopRequested:  # every rank stops at the same batch: a normal end, or Ray Train would retry it
        return {"stopped": True} if dp.is_main else None
    finally:
        events.flush()
    if not dp.is_main:
        return None
    return {
        "outcome": asdict(outcome),
        "node_id": node_id,
        "pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "worker_node_ids": worker_nodes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _fit(make_trainer: Callable[[], Any], key: ModelKey, attempts: int = 3) -> Any:
    """`trainer.fit()`, again when the process group's rendezvous lost its port (Ray Train finds a free port, then
    rank 0 binds it: another process may take it meanwhile; seen with two folds starting on one loaded host). Ray
    Train does not retry that failure itself (a controller error)."""
    for attempt in range(1, attempts + 1):
        try:
            return make_trainer().fit()
        except Exception as e:
            if attempt == attempts or "EADDRINUSE" not in str(e):
                raise
            log.warning("%s: the process group's port was taken meanwhile; starting its workers again", key.label)


@ray.remote(num_cpus=0, num_returns=2)
def _ddp_fold_task(
    refs: dict,
    key: ModelKey,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: Config,
    storage: Optional[RunStorage],
    progress: Optional[ray.actor.ActorHandle],
    stop_flag: Optional[ray.actor.ActorHandle],
    plan: WorkerPlan,
) -> tuple[dict[str, np.ndarray], dict]:
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ctx = ray.get_runtime_context()
    state, attempt = start_attempt(storage, key, pid=os.getpid(), node_id=ctx.get_node_id())
    # Ray Train would run the workers in its run folder: a relative run_dir must stay relative to the driver's.
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    # A fold queued behind others waits for their GPUs: Ray Train would give up on its placement group every 60 s,
    # log the failure and try again (without limit); the same wait, quietly.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "1800")
    scratch = tempfile.mkdtemp(prefix=f"raydf-ddp-{key.name}-")  # Ray Train's run folder: no checkpoint in it
    make_trainer = lambda: TorchTrainer(  # noqa: E731
        _worker_loop,
        train_loop_config={
            "cfg": cfg,
            "key": key,
            "refs": refs,
            "train_idx": train_idx,
            "val_idx": val_idx,
            "storage": storage,
            "progress": progress,
            "stop_flag": stop_flag,
            "attempt": attempt["attempts"],
        },
        torch_config=TorchConfig(backend=plan.backend),
        scaling_config=ScalingConfig(
            num_workers=plan.workers,
            use_gpu=plan.gpus > 0,
            resources_per_worker={"CPU": plan.cpus, **({"GPU": plan.gpus} if plan.gpus else {})},
            placement_strategy=plan.strategy,
        ),
        run_config=RunConfig(
            name=key.name,
            storage_path=scratch,
            # Train restarts a failed worker group; the workers resume from the fold's saved state.
            failure_config=FailureConfig(max_failures=cfg.ray.max_retries),
            # The fold's own progress lines say what it does; Ray Train's errors still reach the fold's error.
            logging_config=LoggingConfig(log_level="ERROR"),
        ),
    )
    try:
        result = _fit(make_trainer, key)
    except Exception as e:  # a worker's error arrives wrapped: the user error, when there is one, in one line
        failures = getattr(e, "worker_failures", {}) or {}
        user = next((u for u in map(find_user_error, failures.values()) if u is not None), None)
        if user is not None:
            raise user from e
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    back = result.return_value
    if back.get("stopped"):
        raise StopRequested()
    back = result.return_value
    info = dict(back["outcome"])
    weights = info.pop("weights")
    info.update(
        **key.tags(),
        val_index=np.asarray(val_idx),
        started_at=attempt["first_started_at"],
        finished_at=time.time(),
        attempts=attempt["attempts"],
        workers=plan.workers,
        placement=plan.strategy,
        **{k: back[k] for k in ("node_id", "pid", "gpu_ids", "worker_node_ids", "peak_rss_mb")},
    )
    return weights, info
