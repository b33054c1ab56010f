"""Crashes on a real Ray instance: a killed fold worker, a killed driver, a lost node."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_oof_matches_checkpoints, separable_images, tiny_overrides, wait_for
from ray_processes import kill_session

from raydf.config import load_config
from raydf.runs.storage import RunStorage
from raydf.training.fold_state import FoldStateStore

REPO = Path(__file__).resolve().parents[1]


FOLD_OVERRIDES = [
    "data.resize=80",
    "data.crop=76",
    "train.batch_size=14",
    "train.epochs=3",
    "train.patience=5",
    "resources.gpus_per_fold=0",
    "ray.max_retries=2",
    "model.name=test_efficientnet",  # the crash handling is the same for every network; this one is 0.1 M parameters
]


def test_killed_fold_worker_is_retried_and_resumes(ray_local, tmp_path):
    from raydf.distributed.folds import run_folds
    from raydf.distributed.session import fold_resources

    cfg = load_config(None, FOLD_OVERRIDES)
    storage = RunStorage(tmp_path)
    store = FoldStateStore(storage, 0)
    killed = []

    def kill_after_first_epoch():
        if wait_for(lambda: storage.exists(store.current)):
            pid = json.loads(storage.read_text(store.attempt_file))["pid"]
            os.kill(pid, signal.SIGKILL)  # what the OOM killer or a lost spot instance does
            killed.append(pid)

    killer = threading.Thread(target=kill_after_first_epoch)
    killer.start()
    images, labels = separable_images()
    results = run_folds(
        ray_local.put(images),
        ray_local.put(labels),
        {0: (np.arange(12, 40), np.arange(12))},
        cfg,
        fold_resources(cfg),
        storage,
    )
    killer.join()
    info = results[0][1]
    assert killed and info["pid"] != killed[0]
    assert info["attempts"] == 2 and info["resumed_from_epoch"] >= 1
    assert [h["epoch"] for h in info["history"]] == [1, 2, 3]  # every epoch exactly once


@pytest.mark.slow
def test_killed_driver_resumes_without_retraining_finished_folds(tiny_demo, tmp_path):
    run_dir = tmp_path / "run"
    # One fold at a time (each takes both CPUs), so fold 0 is finished while fold 1 is still training.
    # fp32: the resumed run's oof.csv is compared with its checkpoints to float rounding. No test set: the soft vote
    # after a resume is the signal tests' (tests/test_signals.py); here, the folds. 16 epochs of test_efficientnet
    # (a fraction of a second each) leave time to kill the driver between fold 1's first and last epoch, even when a
    # loaded machine makes the driver slow to save fold 0's checkpoint (6 epochs were over by then once in CI).
    overrides = tiny_overrides(run_dir, tiny_demo) + [
        "data.test=null",
        "train.epochs=16",
        "train.patience=99",
        "resources.cpus_per_fold=2",
        "train.precision=fp32",
    ]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    driver = subprocess.Popen(
        [sys.executable, "-m", "raydf.train", *overrides],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    storage = RunStorage(run_dir)
    try:
        # Generous: on a loaded 2-core machine fold 0 alone can take more than the default 3 minutes.
        assert wait_for(
            lambda: storage.exists("checkpoints/fold0.pt") and storage.exists("state/fold1.pt"), timeout=480
        )
    finally:
        kill_session(driver.pid)  # kill -9 the driver, its Ray instance and the fold workers
        driver.wait()
    assert not storage.exists("summary.json") and not storage.exists("checkpoints/fold1.pt")
    fold0_before = storage.load_torch("checkpoints/fold0.pt")["meta"]

    proc = subprocess.run(
        [sys.executable, "-m", "raydf.train", f"resume={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(storage.read_text("summary.json"))
    fold0, fold1 = summary["folds"]
    assert fold0["finished_at"] == fold0_before["finished_at"] and fold0["pid"] == fold0_before["pid"]
    assert fold1["resumed_from_epoch"] >= 1 and fold1["epochs_run"] == 16
    assert "cv" in summary
    assert_oof_matches_checkpoints(run_dir)  # fold 0's rows from its checkpoint, fold 1's from its resumed training

    # Resuming a finished run redoes nothing that exists.
    oof_before = storage.read_text("oof.csv")
    proc = subprocess.run(
        [sys.executable, "-m", "raydf.train", f"resume={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(storage.read_text("summary.json"))
    assert again["folds"] == summary["folds"] and storage.read_text("oof.csv") == oof_before


NODE_LOSS_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import numpy as np, ray
    from ray.cluster_utils import Cluster
    from raydf.config import load_config
    from raydf.distributed.folds import run_folds
    from raydf.distributed.session import fold_resources
    from raydf.training.fold_state import FoldStateStore
    from raydf.runs.storage import RunStorage

    run_dir, overrides = sys.argv[1], sys.argv[2:]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    cfg = load_config(None, overrides)
    storage = RunStorage(run_dir)
    store = FoldStateStore(storage, 0)
    removed = []

    def remove_node_running_fold():
        while not storage.exists(store.current):
            time.sleep(0.05)
        node_id = json.loads(storage.read_text(store.attempt_file))["node_id"]
        node = next(n for n in nodes if n.node_id == node_id)
        cluster.remove_node(node, allow_graceful=False)  # the node vanishes, like a reclaimed spot instance
        removed.append(node_id)

    threading.Thread(target=remove_node_running_fold, daemon=True).start()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, (40, 80, 80, 3), dtype=np.uint8)
    labels = np.arange(40) % 2
    results = run_folds(ray.put(images), ray.put(labels), {0: (np.arange(12, 40), np.arange(12))}, cfg,
                        fold_resources(cfg), storage)
    info = results[0][1]
    print("RESULT", json.dumps({"removed": removed, "node_id": info["node_id"], "attempts": info["attempts"],
                      "resumed_from_epoch": info["resumed_from_epoch"],
                      "epochs": [h["epoch"] for h in info["history"]]}), flush=True)
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.slow
def test_fold_survives_the_loss_of_its_node(tmp_path):
    script = tmp_path / "node_loss.py"
    script.write_text(NODE_LOSS_SCRIPT)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), *FOLD_OVERRIDES],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The removed node's raylet may log to stdout after the result: take the marked line.
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(result["removed"]) == 1 and result["node_id"] != result["removed"][0]  # finished elsewhere
    assert result["attempts"] >= 2 and result["resumed_from_epoch"] >= 1
    assert result["epochs"] == [1, 2, 3]


# Ctrl-C and SIGTERM at every step of a run, and the resume after each: tests/test_signals.py.
