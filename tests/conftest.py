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


# The longest test files first (seconds each, 2 cores): with pytest-xdist's file-at-a-time scheduling (Makefile's
# XDIST) neither worker is then left alone with a long file at the end. test_safety and test_real_data_checks stay after
# test_ray_pipeline (see their docstrings).
LONGEST_FIRST = [
    "test_tune.py",
    "test_faces.py",
    "test_signals.py",
    "test_fault_tolerance.py",
    "test_ray_pipeline.py",
    "test_seeds.py",
    "test_multinode.py",
    "test_s3_run_dir.py",
    "test_serve.py",
    "test_gpu_benchmark.py",
    "test_data_parallel.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


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
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        object_store_memory=300 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
    )
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

    run_dir = tmp_path_factory.mktemp("runs") / "run"
    # fp32 (auto would pick bf16 on a CPU with bf16 units): tests compare its probabilities with ones computed in
    # the test to float rounding, and bf16 results depend on how the images are batched.
    cfg = load_config(None, tiny_overrides(run_dir, tiny_demo) + ["train.precision=fp32"])
    assert train(cfg) == str(run_dir)
    # After one epoch the folds' out-of-fold P(fake) spread over 3e-4 around 0.5: no temperature in (0.05, 20) fits
    # them and the run fell back to none. Every test of this run checks its calibrated soft vote instead: T = 0.25
    # (a spread the test images keep well apart at 1e-6) and the Youden threshold, as `raydf.calibrate` applies them
    # (test_models.csv -> submission, summary, report; no inference).
    from raydf.inference.calibration import Calibration
    from raydf.pipelines.calibration import calibrate_run

    calibrate_run(str(run_dir), ["predict.threshold=youden"], fixed=Calibration("temperature", temperature=TINY_T))
    return run_dir, cfg


TINY_T = 0.25  # the temperature of the finished_run fixture's calibration


def tiny_overrides(run_dir, demo) -> list[str]:
    """Overrides for a fast run: 2 folds x 1 epoch at 80 px on the tiny demo set, CPU only.

    The network is timm's `test_efficientnet` (0.1 M parameters): these runs test the pipeline around the network,
    and InceptionResnetV1's 23 M parameters would make every checkpoint 94 MB and every fold state 282 MB. The
    seed's network is trained by the fold-loop tests and the learning test (the default path).
    """
    return [
        f"run_dir={run_dir}",
        f"data.train={demo.train}",
        f"data.test={demo.test}",
        "data.resize=96",
        "data.crop=80",
        "model.name=test_efficientnet",
        "train.folds=2",
        "train.epochs=1",
        "train.batch_size=16",
        "train.eval_batch_size=32",
        "predict.batch_size=16",
        "resources.gpus_per_fold=0",
    ]


def wait_for(predicate, timeout: float = 180.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def separable_images(n: int = 40, size: int = 80, seed: int = 0):
    """(n, size, size, 3) uint8 noise where the fakes (odd rows, label 1) carry a bright central 20 px square."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    c = size // 2
    images[labels == 1, c - 10 : c + 10, c - 10 : c + 10] = 230
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


def checkpoint_prob_fake(run_dir, paths, folds=None, names=None):
    """(K, N) P(fake) of the images `paths` under each fold's checkpoints/fold{k}.pt (`folds`: default all),
    computed in this process as the run evaluates: decoded at data.resize, centre crop data.crop, its precision.
    `names`: checkpoint stems instead (`s7_fold1`, a model of a run of several seeds)."""
    from pathlib import Path

    import numpy as np
    import torch

    from raydf.config import load_config
    from raydf.data.images import center_crop, decode_images
    from raydf.models.factory import build_model
    from raydf.training.engine import Precision, to_input

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    images = center_crop(decode_images([str(p) for p in paths], cfg.data.resize), cfg.data.crop)
    cpu = torch.device("cpu")
    x = to_input(torch.from_numpy(np.ascontiguousarray(images)), cpu)
    precision = Precision.resolve(cfg.train.precision, cpu)
    probs = []
    if names is None:
        names = [f"fold{k}" for k in (range(cfg.train.folds) if folds is None else folds)]
    for name in names:
        ckpt = torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)
        assert name.endswith(f"fold{ckpt['meta']['fold']}")
        model = build_model(cfg.model.dropout, ckpt["meta"]["model"])
        model.load_state_dict(ckpt["state_dict"])
        with torch.no_grad(), precision.autocast(cpu):
            probs.append(torch.softmax(model.eval()(x).float(), 1)[:, 1].numpy())
    return np.stack(probs)


def assert_oof_matches_checkpoints(run_dir, atol: float = 1e-6):
    """Every oof.csv row is P(fake) of its image under the checkpoint of its fold (the one that held it out).

    For an fp32 run: its numbers agree to ~1e-7 (the fold evaluated other batches, channels-last); bf16 results
    depend on the batching. Within each fold the rows must differ by far more than `atol`, or rows out of order
    would match too.
    """
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from raydf.config import load_config

    run_dir = Path(run_dir)
    assert load_config(run_dir / "config.yaml").train.precision == "fp32", "compare fp32 runs only"
    oof, folds = pd.read_csv(run_dir / "oof.csv"), pd.read_csv(run_dir / "folds.csv")
    assert oof[["path", "label", "fold"]].equals(folds[["path", "label", "fold"]])  # the fold table's rows, in order
    for k, rows in oof.groupby("fold"):
        expected = checkpoint_prob_fake(run_dir, rows["path"], [k])[0]
        np.testing.assert_allclose(rows["prob_fake"], expected, rtol=0, atol=atol, err_msg=f"fold {k}")
        assert expected.std() > 20 * atol, f"fold {k}: P(fake) hardly varies, so the row order goes unchecked"
