"""Connecting to Ray (a local instance or a running cluster) and checking that it can run what the config asks for."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import ray

from raydf import signals
from raydf.config import Config
from raydf.distributed.cluster import alive_nodes, describe_cluster
from raydf.errors import ConfigError
from raydf.runs.model_key import run_seeds

log = logging.getLogger(__name__)

# A TCP connect to the address before ray.init: Ray itself retries an unreachable GCS for about 14 minutes
# (20 attempts of ~40 s, ray/_private/node.py::_init_gcs_client) before it raises.
CONNECT_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001
START_HINT = (
    "start one with `ray up cluster.yaml` (see README, 'Run on a cluster') or `ray start --head`, "
    "check it with `ray status`, or leave ray.address unset to start a local Ray instance"
)


@dataclass
class RaySession:
    """Where the driver is connected; `existing_cluster` is False for a local instance started for this run."""

    address: str  # "local", "auto", "host:port" or "ray://host:port"
    source: str  # the setting it came from: ray.address, RAY_ADDRESS, or default
    existing_cluster: bool
    requested_resources: bool = False  # fold_resources asked the autoscaler for nodes; released at the end


def resolve_address(configured: Optional[str]) -> tuple[str, str]:
    """(address, source): `ray.address` if set, else RAY_ADDRESS, else "local" (a new local instance).

    RAY_ADDRESS is how `ray job submit` tells the driver it starts where its cluster is. "local" rather than
    Ray's default None: None would silently join whatever cluster `ray start` last left on this machine.
    """
    if configured:
        address, source = configured.strip(), "ray.address"
    elif os.environ.get("RAY_ADDRESS", "").strip():
        address, source = os.environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS"
    else:
        return "local", "default"
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"{source}={address} is a dashboard address (what `ray job submit` talks to), not a "
            f"cluster address: run the command through `ray job submit`, or set ray.address to "
            f"auto, host:6379 or ray://host:10001"
        )
    return address, source


def _host_port(address: str, source: str) -> Optional[tuple[str, int]]:
    """(host, port) of a `host:port` or `ray://host[:port]` address; None for local/auto."""
    if address in ("local", "auto"):
        return None
    client = address.startswith("ray://")
    rest = address[len("ray://") :] if client else address
    host, sep, port = rest.rpartition(":")
    if not sep and client:
        host, port = rest, str(RAY_CLIENT_PORT)
    if not host or not port.isdigit():
        raise ConfigError(
            f"{source}={address} is not a Ray address: use auto, host:port (the cluster's GCS, "
            f"port 6379 on a `ray up` cluster) or ray://host:10001 (Ray Client)"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, source: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse at once, naming the setting, when nothing listens at the address."""
    target = _host_port(address, source)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"{source}={address}: no Ray cluster answers at {target[0]}:{target[1]} ({reason}): {START_HINT}"
        ) from None


@contextlib.contextmanager
def ray_session(address: Optional[str]) -> Iterator[RaySession]:
    """Use the running Ray instance if there is one (tests, notebooks), else connect or start a local one.

    Only a session started here is shut down here.
    """
    if ray.is_initialized():
        yield RaySession("already connected", "caller", existing_cluster=False)
        return
    address, source = resolve_address(address)
    session = RaySession(address, source, existing_cluster=address != "local")
    if session.existing_cluster:
        check_reachable(address, source)
        kwargs = {"address": address}
    else:
        kwargs = {"address": "local", "include_dashboard": False}
    try:
        context = ray.init(logging_level=logging.WARNING, log_to_driver=True, **kwargs)
    except ConnectionError as e:
        raise ConfigError(f"{source}={address}: cannot connect to a Ray cluster ({e}): {START_HINT}") from None
    finally:
        signals.reinstall()  # ray.init sets a SIGTERM handler that exits without cleaning up
    try:
        where = (
            "started a local Ray instance"
            if not session.existing_cluster
            else f"connected to the Ray cluster at {address} ({source})"
        )
        dashboard = getattr(context, "dashboard_url", None) or ""
        if dashboard and "://" not in dashboard:
            dashboard = f"http://{dashboard}"
        log.info("%s%s\n%s", where, f", dashboard {dashboard}" if dashboard else "", describe_cluster())
        yield session
    finally:
        if session.requested_resources:
            _release_resource_request()
        ray.shutdown()
        signals.reinstall()  # in case a library replaced the handlers meanwhile


def fold_resources(cfg: Config, session: Optional[RaySession] = None) -> dict[str, float]:
    """CPUs and GPUs for one fold task; `gpus_per_fold: null` means one GPU if the cluster has any.

    On a running cluster (`session.existing_cluster`) the autoscaler may still start suitable nodes (a
    `ray up` cluster starts its GPU workers on demand): ask it for one per fold and wait up to
    `ray.scale_up_timeout_s` first.
    """
    wait_s = cfg.ray.scale_up_timeout_s if session is not None and session.existing_cluster else 0
    return checked_resources(
        cfg.resources.cpus_per_fold,
        cfg.resources.gpus_per_fold,
        "resources.cpus_per_fold",
        "resources.gpus_per_fold",
        session,
        wait_s,
        cfg.train.folds * len(run_seeds(cfg)),  # one fold task per model (fold x seed)
    )


def checked_resources(
    cpus: float,
    gpus: Optional[float],
    cpu_key: str,
    gpu_key: str,
    session: Optional[RaySession] = None,
    wait_s: float = 0,
    count: int = 1,
) -> dict[str, float]:
    """`{"num_cpus", "num_gpus"}` one task (a fold, a trial) asks for; `gpus=None`: 1 if the cluster has GPUs.

    Ray (and Tune) wait forever for resources no node has, so an impossible request is refused here, naming
    the config keys; with `wait_s`, after asking the autoscaler for `count` such nodes and waiting that long.
    """
    if gpus is None:
        gpus = 1.0 if max((n.get("GPU", 0) for n in alive_nodes()), default=0) >= 1 else 0.0
    fits = lambda n: n.get("GPU", 0) >= gpus and n.get("CPU", 0) >= cpus  # noqa: E731
    waited = ""
    if wait_s > 0 and session is not None and not any(fits(n) for n in alive_nodes()):
        bundle = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
        try:
            _request_resources([bundle] * count)
            session.requested_resources = True
        except Exception as e:  # e.g. through Ray Client; pending tasks still make an autoscaler scale up
            log.warning("could not ask the autoscaler for nodes (%s)", e)
        asked = f"asked the autoscaler for {count} of them, " if session.requested_resources else ""
        log.warning(
            "no node of the Ray cluster can run a fold (%s) yet: %swaiting up to %gs for a node (watch `ray status`)",
            bundle,
            asked,
            wait_s,
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not any(fits(n) for n in alive_nodes()):
            time.sleep(2)
        waited = f" (after waiting {wait_s:g}s for the autoscaler)"
    nodes = alive_nodes()
    max_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    max_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    if gpus > max_gpu:
        where = "no node has a GPU" if max_gpu == 0 else f"the largest node has {max_gpu:g} GPU(s)"
        raise ConfigError(
            f"{gpu_key}={gpus:g} but {where} in the Ray cluster{waited}: "
            f"set {gpu_key}=0 to run on CPU, or add GPU nodes"
        )
    if cpus > max_cpu:
        raise ConfigError(
            f"{cpu_key}={cpus:g} but the largest node of the Ray cluster has {max_cpu:g} CPU(s){waited}: "
            f"lower {cpu_key}"
        )
    if not any(fits(n) for n in nodes):
        best = max((n.get("CPU", 0) for n in nodes if n.get("GPU", 0) >= gpus), default=0)
        raise ConfigError(
            f"{cpu_key}={cpus:g} with {gpu_key}={gpus:g}: no node of the Ray cluster has both; its "
            f"nodes with {gpus:g} GPU(s) have at most {best:g} CPU(s){waited}: lower {cpu_key}"
        )
    return {"num_cpus": cpus, "num_gpus": gpus}


def _request_resources(bundles: list[dict[str, float]]) -> None:
    # Persistent until overridden; without an autoscaler it only records the request.
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


def _release_resource_request() -> None:
    """Withdraw the request, or the autoscaler would keep the GPU nodes up after the run (and bill them)."""
    try:
        _request_resources([])
    except Exception as e:  # the run's results are written; a failed release must not hide them
        log.warning("could not withdraw the autoscaler request (%s): nodes idle until `ray down`", e)
