"""`python -m benchmarks.gpu`: its CPU dry run writes every section the GPU run writes, with sane figures, so the script
cannot rot between the rare loans of a GPU machine; a section that outruns its time limit is cut and named."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

SECTIONS = ["environment", "fold_training", "compile", "faces", "end_to_end", "inference"]


@pytest.mark.slow  # processes starting: some 15 Ray workers and actors importing torch, Serve's included
def test_the_dry_run_writes_every_section_with_sane_figures(tmp_path):
    out = tmp_path / "results" / "gpu.json"
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        RAYDF_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    # A budget far above what the dry run needs: on a loaded machine no section may be cut here (cutting is the next
    # test's subject).
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--out", str(out), "--budget-s", "1200"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["dry_run"] is True
    assert list(r["sections"]) == SECTIONS
    problems = {n: s.get("error", s["status"]) for n, s in r["sections"].items() if s["status"] != "ok"}
    assert not problems and r["cut_sections"] == [] and r["failed_sections"] == []
    s = r["sections"]

    env_ = s["environment"]
    assert env_["cpu_cores"] >= 1 and env_["torch"] and env_["ray"] and env_["precision_auto"] in ("bf16", "fp32")
    if env_["gpus"] == []:  # this machine: no driver, so NVML says why instead of failing the run
        assert r["nvml"].startswith("unavailable") and env_["driver"].startswith("unavailable")

    folds = s["fold_training"]
    (one,) = folds["per_backbone"]
    assert one["images_per_s"] > 0 and one["loader_alone"]["images_per_s"] > 0 and len(one["epoch_seconds"]) == 2
    assert one["limit"]["limit"] in ("gpu", "data loading", "cpu", "overhead") and one["cpu_busy_fraction"] is not None
    net = folds["network_only"]
    assert min(net[f"{v}_images_per_s"] for v in ("raydf", "fp32", "contiguous")) > 0
    assert net["autocast_over_fp32"] > 0 and net["channels_last_over_contiguous"] > 0
    # K fold tasks sharing the (logical) GPU at 1/K each, all K at once
    assert [(e["k"], e["gpus_per_fold"], len(e["folds"])) for e in folds["shared_gpu"]] == [(1, 1.0, 1), (2, 0.5, 2)]
    assert all(e["total_images_per_s"] > 0 and e["over_one_fold_alone"] > 0 for e in folds["shared_gpu"])
    assert all(f["gpu_ids"] == ["0"] for e in folds["shared_gpu"] for f in e["folds"])

    comp = s["compile"]
    assert comp["off"]["images_per_s"] > 0 and comp["on"]["images_per_s"] > 0
    assert isinstance(comp["compile_seconds"], float) and comp["on_over_off"] > 0

    faces = s["faces"]
    for device, seen in (("cuda", "cpu (granted GPU 0)"), ("cpu", "cpu")):  # no CUDA here: the GPU actor says so
        assert faces[device]["faces"] > 0 and faces[device]["faces_per_s"] > 0 and faces[device]["frames_per_s"] > 0
        assert faces[device]["sources_per_device"] == {seen: 4}

    e2e = s["end_to_end"]
    assert set(e2e["split"]) == {"preflight", "share_images", "folds", "inference", "rest"}
    assert e2e["split"]["folds"] > 0 and e2e["split"]["inference"] > 0 and e2e["folds_concurrent"] is True
    assert "resources.gpus_per_fold=0.5" in e2e["overrides"] and 0 <= e2e["cv"]["accuracy"] <= 1

    vote, srv = s["inference"]["soft_vote"], s["inference"]["serve"]
    assert vote["actors"] == 1 and vote["gpus_per_actor"] == 1.0 and vote["passes"][0]["images_per_s"] > 0
    assert srv["clients"] == 16 and srv["good_requests"] > 0 and srv["requests_per_s"] > 0
    assert srv["failed_good_requests"] == 0 and 0 < srv["p50_ms"] <= srv["p99_ms"] and srv["replicas"] == {"RUNNING": 1}


def test_a_section_past_its_limit_is_cut_and_named_and_the_next_one_still_runs(tmp_path, monkeypatch):
    """The cooperative stop (a section that asks `should_stop`) and the hard one (SIGALRM into a section that never
    asks) both end a section at its limit; the JSON names it, keeps what it measured, and the next section runs."""
    from benchmarks import gpu

    def polite(b, out):
        out["measured"] = 1
        while not b.should_stop():
            time.sleep(0.05)

    def deaf(b, out):
        out["measured"] = 2
        time.sleep(60)

    def quick(b, out):
        out["measured"] = 3

    monkeypatch.setattr(gpu, "SECTIONS", {"polite": 1.0, "deaf": 1.0, "quick": 2.0})
    monkeypatch.setattr(gpu, "SECTION_FUNCTIONS", {"polite": polite, "deaf": deaf, "quick": quick})
    monkeypatch.setattr(gpu, "GRACE_S", 0.5)
    args = argparse.Namespace(out=str(tmp_path / "gpu.json"), budget_s=4.0, data=str(tmp_path))
    b = gpu.Bench(args, dry=True, work=tmp_path)
    try:
        t0 = time.time()
        for name in gpu.SECTIONS:
            gpu.run_section(b, name)
    finally:
        b.monitor.stop()
    assert time.time() - t0 < 4.0
    r = json.loads((tmp_path / "gpu.json").read_text())
    assert r["cut_sections"] == ["polite", "deaf"]
    assert [r["sections"][n]["measured"] for n in ("polite", "deaf", "quick")] == [1, 2, 3]
    assert r["sections"]["quick"]["status"] == "ok"
    assert 0.9 <= r["sections"]["polite"]["limit_s"] <= 1.0  # its share: a quarter of the 4 s budget


def test_a_window_shorter_than_the_sampling_interval_gets_the_sample_that_covers_it():
    """A dry run's steady epoch can be shorter than the monitor's interval: its window must still get the CPU busy
    fraction of the sample period that covers it (a CI run once reported None for it)."""
    from benchmarks.gpu import Monitor

    monitor = Monitor(interval=0.2).start()
    try:
        time.sleep(0.3)
        t0 = time.time()
        window = monitor.window(t0, t0 + 0.001)
    finally:
        monitor.stop()
    assert window["samples"] >= 1 and window["cpu_busy_fraction"] is not None, window
