"""A run directory on S3: `run_dir=s3://...` against a real S3-compatible server (moto's, a subprocess on loopback).

The driver and the Ray workers it starts find the server through AWS_ENDPOINT_URL, which pyarrow's S3 file
system reads; a local Ray instance's workers inherit the driver's environment.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, start_signalable, tiny_overrides, wait_for
from ray_processes import kill_session

from raydf.runs.run_dir import read_csv
from raydf.runs.storage import RunStorage
from raydf.training.fold_state import STATE_KEYS, FoldStateStore

boto3 = pytest.importorskip("boto3", reason="the S3 tests need the test extra: pip install -e '.[test]'")
pytest.importorskip("moto.server", reason="the S3 tests need moto[server]: pip install -e '.[test]'")

BUCKET = "raydf-test"
RUN_FILES = [
    "config.yaml",
    "folds.csv",
    "checkpoints/fold0.pt",
    "checkpoints/fold1.pt",
    "oof.csv",
    "submission.csv",
    "summary.json",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], out) -> subprocess.Popen:
    """`python -m ARGS` in its own session (killable as a group, with Ray's processes), output to `out`."""
    return start_signalable(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
        start_new_session=True,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


class S3Server(SimpleNamespace):
    endpoint: str
    client: object
    log: Path

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def requests(self, method: str, key: str) -> int:
        """How many `method` requests for `key` the server has logged (werkzeug logs one line per request)."""
        pattern = re.compile(rf"{method} /{BUCKET}/{re.escape(key)}[ ?]")
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if pattern.search(line))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server as a subprocess on 127.0.0.1 (a free port) with one bucket; AWS_* variables point this
    process and the commands it starts at it, and keep every AWS client off real credentials and endpoints."""
    tmp = tmp_path_factory.mktemp("moto")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    log = tmp / "moto.log"
    with open(log, "w") as out:
        # TMPDIR: moto spills objects above 5 MB to temporary files; they go with the server.
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TMPDIR=str(tmp)),
            start_new_session=True,
        )
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

        def answers() -> bool:
            assert server.poll() is None, f"moto_server exited: {log.read_text()[-2000:]}"
            try:
                client.list_buckets()
                return True
            except Exception:  # noqa: BLE001 (not listening yet)
                return False

        assert wait_for(answers, timeout=60, interval=0.2), "moto_server did not answer"
        client.create_bucket(Bucket=BUCKET)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            yield S3Server(endpoint=endpoint, client=client, log=log)
    finally:
        server.kill()
        server.wait()


def test_an_object_is_read_in_one_request(s3):
    storage = RunStorage(f"s3://{BUCKET}/reads")
    data = os.urandom(3 * 2**20)  # a stream reader fetches 256 KB ranges: 12 requests
    storage.write_bytes("blob.bin", data)
    assert storage.read_bytes("blob.bin") == data
    assert wait_for(lambda: s3.requests("GET", "reads/blob.bin") >= 1, timeout=10)
    assert s3.requests("GET", "reads/blob.bin") == 1


def test_fold_state_on_s3_is_one_object_replaced_by_each_upload(s3):
    storage = RunStorage(f"s3://{BUCKET}/states")
    store = FoldStateStore(storage, 0)
    for epoch in (1, 2, 3):
        store.save({k: epoch for k in STATE_KEYS})
    # No move to a previous generation (a server-side copy of the whole state, then a delete), no temp object.
    assert storage.listdir("state") == ["fold0.pt"]
    assert store.load()["epoch"] == 3


def _run(args: list[str], log: Path, kill_group_when=None, worker_to_kill=None) -> tuple[subprocess.Popen, list[int]]:
    """Run `python -m ARGS` to its end, its output in `log`. Meanwhile, once `kill_group_when()` is true, kill -9 its
    whole process group (Ray's processes with it); or once `worker_to_kill()` returns a pid, SIGKILL that process."""
    killed: list[int] = []
    with open(log, "w") as out:
        proc = _start(args, out)

        def time_to_kill() -> bool:
            if kill_group_when is not None and kill_group_when():
                kill_session(proc.pid)
                killed.append(proc.pid)
            elif worker_to_kill is not None and (pid := worker_to_kill()) is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return bool(killed)

        try:
            if kill_group_when is not None or worker_to_kill is not None:
                wait_for(lambda: proc.poll() is not None or time_to_kill(), timeout=300, interval=0.2)
            proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                kill_session(proc.pid)
                proc.wait()
    return proc, killed


@pytest.fixture(scope="module")
def s3_run(s3, tiny_demo, tmp_path_factory):
    """A run directory on S3 through both crashes a cluster sees (2 folds x 2 epochs, with the test set):

    1. `python -m raydf.train run_dir=s3://...`, killed (kill -9 of its process group: Ray's processes too) once
       fold 0's first epoch is in the bucket;
    2. `python -m raydf.train resume=s3://...`, whose fold 0 worker is killed (SIGKILL, as the OOM killer or a
       lost spot instance would) as soon as its attempt starts: Ray retries the fold, which resumes again.
    """
    uri = f"s3://{BUCKET}/run"
    storage = RunStorage(uri)
    store = FoldStateStore(storage, 0)
    logs = tmp_path_factory.mktemp("s3-run")

    def resumed_worker() -> Optional[int]:
        """The pid of fold 0's worker in the resumed run (the fold's second attempt), once it has started."""
        try:
            record = json.loads(storage.read_text(store.attempt_file)) if storage.exists(store.attempt_file) else {}
        except (OSError, ValueError):
            # Polled while the worker replaces the record: pyarrow sizes the object (HEAD) before reading it (GET),
            # and moto answered with the new, shorter record plus the old one's last byte. The next poll reads it
            # whole (raydf's own readers of this file tolerate the same: begin_attempt, the stop path).
            return None
        return record["pid"] if record.get("attempts", 0) >= 2 else None

    driver, _ = _run(
        ["raydf.train", *tiny_overrides(uri, tiny_demo), "train.epochs=2"],
        logs / "train.log",
        kill_group_when=lambda: storage.exists(store.current),
    )
    after_kill = SimpleNamespace(returncode=driver.returncode, files=storage.listdir(), state=store.load())
    resumed, killed = _run(["raydf.train", f"resume={uri}"], logs / "resume.log", worker_to_kill=resumed_worker)
    return SimpleNamespace(
        uri=uri,
        storage=storage,
        after_kill=after_kill,
        returncode=resumed.returncode,
        log=(logs / "resume.log").read_text(),
        killed_worker=killed,
    )


@pytest.mark.slow
def test_a_killed_driver_leaves_its_fold_state_in_the_bucket(s3_run):
    assert s3_run.after_kill.returncode == -signal.SIGKILL
    assert "summary.json" not in s3_run.after_kill.files
    assert s3_run.after_kill.state["epoch"] >= 1  # readable: an upload appears whole or not at all


@pytest.mark.slow
def test_resume_from_s3_completes_the_run_in_the_bucket(s3, s3_run):
    assert s3_run.returncode == 0, s3_run.log[-3000:]
    keys = s3.keys("run/")
    assert {f"run/{name}" for name in RUN_FILES} <= set(keys)
    assert not [k for k in keys if k.endswith(".tmp")]  # nothing half-written left
    summary = json.loads(s3_run.storage.read_text("summary.json"))
    assert [f["fold"] for f in summary["folds"]] == [0, 1] and [f["epochs_run"] for f in summary["folds"]] == [2, 2]
    assert "test" in summary
    history = read_csv(s3_run.storage, "history.csv")
    assert history.groupby("fold")["epoch"].apply(list).tolist() == [[1, 2], [1, 2]]  # every epoch exactly once
    assert set(s3_run.storage.load_torch("checkpoints/fold1.pt")) == {"state_dict", "meta"}  # weights_only


@pytest.mark.slow
def test_a_killed_fold_worker_resumes_from_the_state_in_the_bucket(s3_run):
    assert s3_run.returncode == 0, s3_run.log[-3000:]
    assert s3_run.killed_worker, "fold 0 finished before its worker could be killed"
    fold0 = json.loads(s3_run.storage.read_text("summary.json"))["folds"][0]
    # Attempts: the killed driver's, the resumed run's killed worker, Ray's retry of it.
    assert fold0["attempts"] == 3 and fold0["pid"] != s3_run.killed_worker[0]
    assert fold0["resumed_from_epoch"] >= 1


@pytest.mark.slow
def test_predict_from_s3_reproduces_the_submission(s3_run, tiny_demo, tmp_path):
    assert s3_run.returncode == 0, s3_run.log[-3000:]
    out = tmp_path / "predictions.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raydf.predict",
            "--run",
            s3_run.uri,
            "--images",
            str(tiny_demo.test),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    submission, predicted = read_csv(s3_run.storage, "submission.csv"), pd.read_csv(out)
    assert predicted["image"].tolist() == submission["image"].tolist()
    assert (predicted["label"] == submission["label"]).all()
    np.testing.assert_allclose(predicted["prob_fake"], submission["prob_fake"], rtol=0, atol=1e-6)
