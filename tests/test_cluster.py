"""Running on a cluster, the fast parts: cluster.yaml against Ray's own validator, where the driver connects
and how it refuses what cannot work (an unreachable address, a fold no node fits, test images a node cannot
read). The multi-node runs are in test_multinode.py."""

import copy
import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import tiny_overrides
from ray_processes import REPO, child_env, free_port

from raydf.config import load_config
from raydf.errors import ConfigError, DataError


def cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def ray_up_validation(config: dict) -> None:
    """What `ray up` checks before it launches anything (ray/autoscaler/_private/commands.py::_bootstrap_config):
    merge the provider's defaults, then validate against ray/autoscaler/ray-schema.json and the cross-field
    rules. The AWS-specific step after it (resolving key pairs, subnets, IAM) needs an AWS account."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_validator():
    config = cluster_yaml()
    ray_up_validation(config)
    nodes = config["available_node_types"]
    head, gpu = nodes[config["head_node_type"]], nodes["gpu_worker"]
    assert head["resources"].get("GPU", 0) == 0 and gpu["resources"]["GPU"] == 1  # one GPU per fold
    assert gpu["min_workers"] == 0 and gpu["max_workers"] == config["max_workers"] == 4  # the seed's 4 folds
    assert config["idle_timeout_minutes"] > 0
    assert config["file_mounts"]["/home/ubuntu/raydf"] == "."
    assert any("pip install -q -e ~/raydf -c ~/raydf/constraints.txt" in c for c in config["setup_commands"])


@pytest.mark.parametrize(
    "break_it, error",
    [
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "is not of type 'integer'"),
        (lambda c: c.update(head_node_type="gpu"), "head_node_type"),
        (lambda c: c["available_node_types"]["gpu_worker"].update(gpus=1), "Additional properties"),
    ],
)
def test_rays_validator_rejects_a_broken_cluster_yaml(break_it, error):
    config = cluster_yaml()
    break_it(config)
    with pytest.raises(Exception, match=error):
        ray_up_validation(config)


def test_address_comes_from_ray_address_then_RAY_ADDRESS_then_a_local_instance(monkeypatch):
    from raydf.distributed.session import resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == ("local", "default")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # what `ray job submit` hands the driver it starts
    assert resolve_address(None) == ("10.0.0.5:6379", "RAY_ADDRESS")
    assert resolve_address("auto") == ("auto", "ray.address")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # the job CLI's address, not a driver's
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS=http://127\.0\.0\.1:8265 is a dashboard address"):
        resolve_address(None)


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_unreachable_address_is_refused_at_once(form):
    from raydf.distributed.session import check_reachable

    port = free_port()  # nothing listens there
    address = form.format(port=port)
    t0 = time.time()
    with pytest.raises(
        ConfigError,
        match=rf"ray\.address={re.escape(address)}: no Ray cluster answers at "
        rf"127\.0\.0\.1:{port} .*ray up cluster\.yaml.*ray status",
    ):
        check_reachable(address, "ray.address")
    assert time.time() - t0 < 5  # Ray's own ray.init retries an unreachable GCS for ~14 minutes
    with pytest.raises(ConfigError, match=r"ray\.address=headnode is not a Ray address"):
        check_reachable("headnode", "ray.address")


def test_connection_error_from_ray_init_names_the_key(monkeypatch):
    """E.g. ray.address=auto with no cluster on this machine: ray.init raises ConnectionError."""
    import ray

    from raydf.distributed.session import ray_session

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(
        ConfigError,
        match=r"ray\.address=auto: cannot connect to a Ray cluster \(Could not find "
        r"any running Ray instance\.\): start one with `ray up cluster\.yaml`",
    ):
        with ray_session("auto"):
            pass


def test_cli_refuses_an_unreachable_cluster_in_one_line(tiny_demo, tmp_path):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "raydf.train",
        *tiny_overrides(tmp_path / "run", tiny_demo),
        f"ray.address=127.0.0.1:{port}",
    ]
    done = subprocess.run(cmd, env=child_env(str(tmp_path)), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"raydf: error: ray.address=127.0.0.1:{port}: no Ray cluster answers" in done.stderr
    assert "Traceback" not in done.stderr


def test_driver_describes_the_cluster(ray_local):
    from raydf.distributed.cluster import describe_cluster

    text = describe_cluster()
    assert text.startswith("Ray cluster: 1 node(s), 2 CPU, 1 GPU")
    assert re.search(r"\n  head \S+ [0-9a-f]{12}: 2 CPU, 1 GPU, object store 0\.3 GiB", text)


def test_a_fold_no_node_fits_is_refused(ray_local, tiny_demo, tmp_path):
    from raydf.distributed.session import RaySession, fold_resources

    base = tiny_overrides(tmp_path / "x", tiny_demo)
    with pytest.raises(
        ConfigError,
        match=r"resources\.cpus_per_fold=3 but the largest node of the Ray cluster "
        r"has 2 CPU\(s\): lower",
    ):
        fold_resources(load_config(None, base + ["resources.cpus_per_fold=3"]))
    # On a running cluster it first asks the autoscaler and waits (ray.scale_up_timeout_s); this one has none.
    session = RaySession("auto", "ray.address", existing_cluster=True)
    cfg = load_config(None, base + ["resources.gpus_per_fold=2", "ray.scale_up_timeout_s=1"])
    with pytest.raises(
        ConfigError,
        match=r"largest node has 1 GPU\(s\) in the Ray cluster \(after waiting 1s "
        r"for the autoscaler\)",
    ):
        fold_resources(cfg, session)
    assert session.requested_resources  # so ray_session withdraws the request at the end
    from raydf.distributed.session import _release_resource_request

    _release_resource_request()


def test_unreadable_test_images_are_refused_before_training(ray_local, tmp_path):
    from raydf.distributed.cluster import check_readable_on_every_node

    present = tmp_path / "a.png"
    present.write_bytes(b"png")
    check_readable_on_every_node([str(present)], "data.test")
    missing = str(tmp_path / "b.png")
    with pytest.raises(
        DataError,
        match=rf"data\.test: 1 of 2 sampled images cannot be read on node \S+ of the "
        rf"Ray cluster, e\.g\. {re.escape(missing)}\..*shared file system",
    ):
        check_readable_on_every_node([str(present), missing], "data.test")
