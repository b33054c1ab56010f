"""Shared fixtures: one real local Ray instance for the session, a tiny demo data set, a tiny config."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO.parent / "shared/data/ffhq-stylegan-2200").resolve()  # ../shared may be a link


def require_shared() -> Path:
    """The shared FFHQ/StyleGAN set. Missing, it fails the test under CI (where it is always present, so a broken
    path cannot hide the tests that use it) and skips it elsewhere."""
    if SHARED.is_dir():
        return SHARED
    message = f"shared data set not found at {SHARED}"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message} (CI is set: the tests that need it must run)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # The demo set is generated into a temporary cache, never the user's ~/.cache.
    os.environ["RAYDF_CACHE"] = str(tmp_path_factory.mktemp("raydf-cache"))
    yield


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance: 2 CPUs and one *logical* GPU (no CUDA needed), small object store."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file written to $HOME by tests
    ray.init(address="local", num_cpus=2, num_gpus=1, object_store_memory=300 * 1024**2, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """64 training and 32 test images of the demo generator at 128 px."""
    from raydf.data.demo import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo"), n_train=64, n_test=32, size=128)


@pytest.fixture(scope="session")
def finished_run(ray_local, tiny_demo, tmp_path_factory):
    """One tiny training run (2 folds x 1 epoch), shared by every test that reads a finished run directory."""
    from raydf.config import load_config
    from raydf.pipelines.training import train

    # Two idle workers up front so both fold tasks start at once: a cold worker start can outlast a 1-epoch tiny
    # fold on a busy 2-core machine, which would hide the overlap the tests check.
    @ray_local.remote(num_cpus=1)
    def warm() -> int:  # defined here: cloudpickle ships it by value (conftest is not importable by workers)
        return os.getpid()

    ray_local.get([warm.remote() for _ in range(2)])
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    cfg = load_config(None, tiny_overrides(run_dir, tiny_demo))
    assert train(cfg) == str(run_dir)
    return run_dir, cfg


def tiny_overrides(run_dir, demo) -> list[str]:
    """Overrides for a fast run: 2 folds x 1 epoch at 80 px on the tiny demo set, CPU only."""
    return [f"run_dir={run_dir}", f"data.train={demo.train}", f"data.test={demo.test}", "data.resize=96",
            "data.crop=80", "train.folds=2", "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=32",
            "predict.batch_size=16", "resources.gpus_per_fold=0"]


def wait_for(predicate, timeout: float = 180.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def separable_images(n: int = 40, size: int = 80):
    """(n, size, size, 3) uint8 noise where the fakes (odd rows, label 1) carry a bright central square."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    images[labels == 1, 30:50, 30:50] = 230
    return images, labels


def _default_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_signalable(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Start a process that a test will signal, with SIGINT and SIGTERM at their default disposition.

    A test runner started in the background of a script (`make test &`) inherits SIGINT *ignored*, and so would
    the process (raydf keeps an inherited ignore, as Unix programs do): the test would then depend on how its
    runner was started.
    """
    kwargs.setdefault("cwd", REPO)
    return subprocess.Popen(cmd, preexec_fn=_default_stop_signals, **kwargs)
