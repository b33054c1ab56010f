"""Test helpers that start Ray clusters in separate processes and always stop exactly those processes.

Several people run Ray on the same machine, so nothing here uses `ray stop` (it kills every Ray process
of the machine) or fixed ports. Each cluster is started in a new session (`start_new_session=True`) with
its own temporary directory; clean-up kills, by pid, the processes of that session and any process whose
command line names that directory, and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tmpdir(prefix: str) -> str:
    # Ray puts Unix sockets under its temp dir; sockets paths are limited to ~107 bytes, pytest's are long.
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def ours(session_id: Optional[int] = None, marker: Optional[str] = None) -> list[int]:
    """Pids in session `session_id` (a process started with start_new_session=True and everything it spawned,
    whatever they renamed themselves to) or whose command line contains `marker`; never this process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if (session_id is not None and os.getsid(pid) == session_id) or (marker and marker in _cmdline(pid)):
                pids.append(pid)
        except OSError:  # exited meanwhile, or not ours to inspect
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def kill_ours(session_id: Optional[int] = None, marker: Optional[str] = None, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, the processes `ours(session_id, marker)` finds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = ours(session_id, marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)


def kill_session(session_id: int, timeout_s: float = 30.0) -> None:
    """kill -9 every process of session `session_id` at once, as a crash or a lost machine would, and wait until
    none is left.

    Killing the process group is not enough: Ray's workers run in process groups of their own (same session), and
    a fold worker outlives its raylet for a moment, long enough to train on and upload another epoch's state while
    a test reads the bucket it writes to.
    """
    deadline = time.time() + timeout_s
    while pids := [p for p in ours(session_id) if _alive(p)]:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if time.time() > deadline:
            raise AssertionError(f"processes {pids} of session {session_id} survived SIGKILL for {timeout_s} s")
        time.sleep(0.05)


def child_env(tmpdir: str, repo_on_path: bool = True, **extra: str) -> dict[str, str]:
    """Environment for Ray processes: private temp dir, no token file in $HOME, and this checkout importable
    (`repo_on_path=False`: only through what the processes are given, e.g. a job's working_dir)."""
    env = dict(os.environ)
    env.update(RAY_TMPDIR=tmpdir, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)
    if repo_on_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


class HelperCluster:
    """A `ray.cluster_utils.Cluster` living in `cluster_helper.py` (a subprocess with a private RAY_TMPDIR)."""

    def __init__(self) -> None:
        self.tmpdir = short_tmpdir("rdf-cl-")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "cluster_helper.py")],
            env=child_env(self.tmpdir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.address: Optional[str] = None

    def _call(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"cluster helper exited with {self.proc.wait()} on {command}")
        return json.loads(line)

    def start_head(self, **node_args) -> str:
        self.address = self._call({"head": node_args})["address"]
        return self.address

    def add_node(self, **node_args) -> str:
        return self._call({"add_node": node_args})["node_id"]

    def shutdown(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.close()  # end of input: the helper shuts the cluster down
                self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            # The helper, its raylets, workers and dashboard processes: its session, or its temp dir.
            kill_ours(session_id=self.proc.pid, marker=self.tmpdir)
            self.proc.wait()
            shutil.rmtree(self.tmpdir, ignore_errors=True)


class Driver:
    """A `python ...` command (e.g. `-m raydf.train`) in its own session, its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while text not in self.output:
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"{text!r} not printed (exit code {self.proc.poll()}):\n{self.output[-4000:]}")
            time.sleep(0.5)

    def finish(self, timeout_s: float) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """The driver and anything it started (a local Ray instance, its workers)."""
        kill_ours(session_id=self.proc.pid)
        self.proc.wait()


class RayStartHead:
    """`ray start --head --block` with a dashboard (for job submission), on free ports, in its own session."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.tmpdir = short_tmpdir("rdf-job-")
        ports = set()
        while len(ports) < 4:
            ports.add(free_port())
        gcs, dashboard, agent, client = sorted(ports)
        self.address = f"127.0.0.1:{gcs}"  # what a driver passes as ray.address
        self.dashboard_url = f"http://127.0.0.1:{dashboard}"
        self.log = Path(self.tmpdir) / "ray-start.log"
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            "--object-store-memory=300000000",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={agent}",
            f"--ray-client-server-port={client}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            f"--temp-dir={self.tmpdir}",
            "--disable-usage-stats",
        ]
        with open(self.log, "w") as log:
            # No checkout on PYTHONPATH: a job imports raydf from its uploaded working_dir (or the installed one).
            # No 30 s SIGTERM drain (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S): nothing to drain at teardown.
            env = child_env(self.tmpdir, repo_on_path=False, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Until the dashboard's job API answers."""
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + timeout_s
        while True:
            try:
                JobSubmissionClient(self.dashboard_url).list_jobs()
                return
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"ray start did not come up:\n{self.log.read_text()[-4000:]}") from None
                time.sleep(1)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # --block: drains, then stops the processes it started
                self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_ours(session_id=self.proc.pid, marker=self.tmpdir)
            self.proc.wait()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
