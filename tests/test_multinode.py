"""Runs on a multi-node cluster, the way a user starts them: `python -m raydf.train ray.address=...` against a
`ray.cluster_utils.Cluster`, and a job submitted to a `ray start --head` cluster with the job submission API.

Every cluster runs in separate processes with its own temp dir and ports, and is stopped by its fixture's
teardown even when the test fails; this test process never calls `ray.init`, so the session `ray_local`
fixture is unaffected.
"""

import json
import shlex
import sys
import time

import pytest
from conftest import tiny_overrides
from ray_processes import REPO, Driver, HelperCluster, RayStartHead, child_env


@pytest.fixture
def helper_cluster():
    cluster = HelperCluster()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def ray_start_head():
    head = RayStartHead(num_cpus=2)
    yield head
    head.stop()


@pytest.mark.slow
def test_folds_land_on_different_gpu_nodes_that_join_after_the_driver(helper_cluster, tiny_demo, tmp_path):
    """A head with no GPU, like cluster.yaml's; the GPU workers join while the driver waits for them, as the
    autoscaler's would; each fold lands on its own worker's (logical) GPU."""
    address = helper_cluster.start_head(num_cpus=1)
    run_dir = tmp_path / "run"
    args = [
        "-m",
        "raydf.train",
        f"ray.address={address}",
        *tiny_overrides(run_dir, tiny_demo),
        "resources.gpus_per_fold=1",
        "ray.scale_up_timeout_s=300",
    ]
    driver = Driver(args, env=child_env(helper_cluster.tmpdir))
    try:
        driver.wait_for("asked the autoscaler for 2 of them", timeout_s=180)
        workers = {helper_cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)}
        code = driver.finish(timeout_s=480)
    finally:
        driver.kill()
    assert code == 0, driver.output[-4000:]
    assert f"connected to the Ray cluster at {address} (ray.address)" in driver.output
    assert "Ray cluster: 1 node(s), 1 CPU, 0 GPU" in driver.output  # what it found when it connected
    folds = json.loads((run_dir / "summary.json").read_text())["folds"]
    assert len({f["node_id"] for f in folds}) == 2 and {f["node_id"] for f in folds} == workers, (folds, workers)
    # No check that the folds overlapped in time: each node's worker starts cold (importing torch takes seconds on a
    # loaded machine) and a tiny fold takes under a second. test_a_short_run_learns_separable_data checks overlap.
    assert (run_dir / "submission.csv").is_file()


@pytest.mark.slow
def test_job_submitted_to_a_running_cluster_writes_its_run(ray_start_head, tiny_demo, tmp_path):
    """`ray job submit --working-dir . -- python -m raydf.train ...`, through the Python job client."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    ray_start_head.wait_ready()
    client = JobSubmissionClient(ray_start_head.dashboard_url)
    run_dir = tmp_path / "job-run"
    entrypoint = shlex.join([sys.executable, "-m", "raydf.train", *tiny_overrides(run_dir, tiny_demo)])
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO)})
    deadline = time.time() + 480
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, client.get_job_logs(job)[-4000:]
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "connected to the Ray cluster at" in logs and "(RAY_ADDRESS)" in logs  # not a new local instance
    for name in (
        "config.yaml",
        "folds.csv",
        "summary.json",
        "submission.csv",
        "checkpoints/fold0.pt",
        "checkpoints/fold1.pt",
    ):
        assert (run_dir / name).is_file(), name
    assert f"run directory: {run_dir}" in logs
