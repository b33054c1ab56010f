"""Connecting to Ray and checking that the cluster can run what the config asks for."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional

import ray

from raydf.config import Config
from raydf.errors import ConfigError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(address: Optional[str]) -> Iterator[None]:
    """Use the running Ray instance if there is one (tests, notebooks), else connect or start a local one.

    Only a session started here is shut down here.
    """
    if ray.is_initialized():
        yield
        return
    # "local" always starts a new instance; None would join a cluster that `ray start` left on this machine.
    kwargs = {"address": address} if address else {"address": "local", "include_dashboard": False}
    # Ray folds log lines that differ only in numbers into "[repeated 2x]": that would hide a fold's progress.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(logging_level=logging.WARNING, log_to_driver=True, **kwargs)
    try:
        res = ray.cluster_resources()
        log.info("Ray: %s, %d node(s), %g CPU, %g GPU", address or "local instance", len(ray.nodes()),
                 res.get("CPU", 0), res.get("GPU", 0))
        yield
    finally:
        ray.shutdown()


def fold_resources(cfg: Config) -> dict[str, float]:
    """CPUs and GPUs for one fold task; `gpus_per_fold: null` means one GPU if the cluster has any."""
    return checked_resources(cfg.resources.cpus_per_fold, cfg.resources.gpus_per_fold, "resources.cpus_per_fold",
                             "resources.gpus_per_fold")


def checked_resources(cpus: int, gpus: Optional[float], cpu_key: str, gpu_key: str) -> dict[str, float]:
    """`{"num_cpus", "num_gpus"}` one task (or trial) asks for; `gpus=None` means 1 if the cluster has GPUs, else 0.

    Ray (and Tune) only wait, forever, for resources no node has, so impossible requests are refused here,
    naming the config keys.
    """
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    max_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    max_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    if gpus is None:
        gpus = 1.0 if max_gpu >= 1 else 0.0
    if gpus > max_gpu:
        where = "no node has a GPU" if max_gpu == 0 else f"the largest node has {max_gpu:g} GPU(s)"
        raise ConfigError(f"{gpu_key}={gpus:g} but {where} in the Ray cluster: "
                          f"set {gpu_key}=0 to run on CPU, or add GPU nodes")
    if cpus > max_cpu:
        raise ConfigError(f"{cpu_key}={cpus} but the largest node of the Ray cluster has "
                          f"{max_cpu:g} CPU(s): lower {cpu_key}")
    return {"num_cpus": cpus, "num_gpus": gpus}
