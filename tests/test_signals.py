"""Stopping commands with SIGINT (Ctrl-C) and SIGTERM (kill, timeout, Kubernetes, Slurm, preemption).

Every process a test signals is started with that signal's *default* disposition (`start_signalable`): a test
runner started in the background of a script inherits SIGINT ignored, and raydf respects an inherited ignore.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, start_signalable, tiny_overrides, wait_for

from raydf.runs.storage import RunStorage
from raydf.training.fold_state import FoldStateStore

# A driver whose pipeline steps announce themselves on stderr ("PHASE name"); with PAUSE_AT=name it also waits
# there, so a signal is sure to land inside that step. The soft vote is paused inside Ray: a test set this small is
# voted in one Ray task (raydf.distributed.inference.SMALL_SET) that takes a second, and with PAUSE_AT=vote that
# task sleeps first, so the signal lands while the driver waits for it.
DRIVER = textwrap.dedent("""
    import os, sys, time
    import ray
    import raydf.distributed.inference as inference
    import raydf.pipelines.training as pipeline
    import raydf.runs.run_dir as run_dir

    if os.environ.get("PAUSE_AT") == "vote":
        @ray.remote
        def sleeping_vote(*args):
            time.sleep(120)
        inference._vote_task = sleeping_vote

    def announce(name, fn, pause):
        def step(*args, **kwargs):
            print(f"PHASE {name}", file=sys.stderr, flush=True)
            if pause and os.environ.get("PAUSE_AT") == name:
                time.sleep(120)
            return fn(*args, **kwargs)
        return step

    for module, name, attr, pause in [(run_dir, "preflight", "preflight", True),
                                      (pipeline, "share", "share_images", True),
                                      (pipeline, "vote", "soft_vote_predict", False),
                                      (pipeline, "report", "build_report", True)]:
        setattr(module, attr, announce(name, getattr(module, attr), pause))

    from raydf.cli import run_cli
    from raydf.train import main, parse_args
    run_cli(main, parse_args())
""")

SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM}
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _run_until(
    script: Path, args: list[str], phase: str, sig: int, run_dir: Path, env: dict, second_sig: int | None = None
) -> tuple[int, str]:
    """Start the driver, signal it once it is in `phase` (fold training: once a fold saved an epoch)."""
    log = script.parent / f"driver-{phase}-{sig}.err"
    with open(log, "w") as err:
        driver = start_signalable(
            [sys.executable, str(script), *args], env=dict(env, PAUSE_AT=phase), stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            if phase == "folds":
                reached = wait_for(lambda: (run_dir / "state" / "fold0.pt").exists(), timeout=240)
            else:
                reached = wait_for(lambda: f"PHASE {phase}" in log.read_text(), timeout=240)
                if phase == "vote":
                    time.sleep(2)  # the driver is waiting for the vote's task
            assert reached, f"the driver never reached {phase}:\n{log.read_text()[-3000:]}"
            driver.send_signal(sig)
            if second_sig is not None:  # a second signal during the clean shutdown ends it at once
                time.sleep(0.3)
                t0 = time.time()
                driver.send_signal(second_sig)
                driver.wait(timeout=20)
                assert time.time() - t0 < 10
            driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
    return driver.returncode, log.read_text()


def _leftover_temp_files(run_dir: Path) -> list[str]:
    return [str(p) for p in run_dir.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]


# Each step is interrupted once, SIGTERM and SIGINT in turn, and the run resumed into the next step; the second
# chain's fold training also gets a second signal during its clean shutdown (the hard exit: local fold workers
# killed, their partial files removed). Four driver starts per chain. (Both signals raise the same `Stopped`; the
# chains once covered both at every step: 12 starts instead of 8, a minute more of the suite, for the same handler.)
CHAINS = {
    "to-folds": [("preflight", "TERM"), ("share", "INT"), ("folds", "TERM")],
    "from-folds": [("folds", "INT+TERM"), ("vote", "INT"), ("report", "TERM")],
}


def _chain(chain: str, demo, tmp_path: Path) -> None:
    """Run the steps of `chain` on one run directory, each interrupted and checked, then resume it to the end."""
    tmp_path.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    run_dir = tmp_path / "run"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
    new_run = tiny_overrides(run_dir, demo) + ["train.epochs=3"]
    resume = [f"resume={run_dir}"]
    for step, (phase, sigs) in enumerate(CHAINS[chain]):
        first, *second = [SIGNALS[s] for s in sigs.split("+")]
        # A stop in the pre-flight leaves no run directory: the step after it starts the run again.
        args = new_run if step == 0 or phase == "share" else resume
        code, err = _run_until(script, args, phase, first, run_dir, env, second[0] if second else None)
        where = f"{chain}, {phase}"
        assert code == EXIT[first], f"{where}: exit {code}\n{err[-3000:]}"
        assert "Traceback" not in err, f"{where}:\n{err[-3000:]}"
        assert not _leftover_temp_files(run_dir), where
        if not second:  # the message names the signal that stopped it
            assert f"interrupted ({first.name})" in err, f"{where}:\n{err[-3000:]}"
        if phase == "preflight":  # nothing was written: the same command starts over
            assert "run the same command again" in err and not run_dir.exists()
        elif not second:
            assert f"python -m raydf.train resume={run_dir}" in err, f"{where}:\n{err[-3000:]}"
        if phase == "folds":
            assert not (run_dir / "summary.json").exists()
            # What a resume starts from: the latest state, or the one before when the worker was killed while
            # saving (its latest is moved aside before the new one is written).
            state = FoldStateStore(RunStorage(run_dir), 0).load()
            assert state is not None and state["epoch"] >= 1  # the completed epochs are kept
    proc = subprocess.run(
        [sys.executable, "-m", "raydf.train", *resume], cwd=REPO, env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, f"{chain}: {proc.stderr[-3000:]}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [f["epochs_run"] for f in summary["folds"]] == [3, 3] and "test" in summary
    assert (run_dir / "report.md").is_file() and (run_dir / "submission.csv").is_file()
    assert not _leftover_temp_files(run_dir)


@pytest.mark.slow
def test_a_signal_at_every_step_stops_cleanly_and_the_run_resumes_to_the_end(tiny_demo, tmp_path):
    """Both chains at once, each on its own run directory and its own local Ray instance: most of a step is
    processes starting (Python, Ray, workers), which two chains overlap on 2 cores; a step's signal still lands
    inside its step (the driver announces it, and pauses there where the step is short)."""
    with ThreadPoolExecutor(len(CHAINS)) as pool:
        runs = [pool.submit(_chain, chain, tiny_demo, tmp_path / chain) for chain in CHAINS]
        for run in runs:
            run.result()  # re-raises a chain's failed assertion


PREDICT_DRIVER = textwrap.dedent("""
    import sys
    import raydf.pipelines.training as pipeline
    import raydf.runs.run_dir as run_dir

    vote = pipeline.soft_vote_predict
    def announced(*args, **kwargs):
        print("PHASE vote", file=sys.stderr, flush=True)
        return vote(*args, **kwargs)
    pipeline.soft_vote_predict = announced

    from raydf.cli import run_cli
    from raydf.predict import main, parse_args
    run_cli(main, parse_args())
""")


@pytest.mark.slow
def test_sigterm_stops_predict_without_writing_its_output(finished_run, tiny_demo, tmp_path):
    run_dir, _ = finished_run
    script = tmp_path / "predict.py"
    script.write_text(PREDICT_DRIVER)
    out = tmp_path / "pred.csv"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
    err_file = tmp_path / "predict.err"
    with open(err_file, "w") as err:
        proc = start_signalable(
            [sys.executable, str(script), "--run", str(run_dir), "--images", str(tiny_demo.test), "--out", str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        # Ray starts and the checkpoints load first: minutes on a loaded 2-core machine
        assert wait_for(lambda: "PHASE vote" in err_file.read_text(), timeout=300), err_file.read_text()[-3000:]
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    text = err_file.read_text()
    assert proc.returncode == 143, text[-3000:]
    assert "Traceback" not in text and "run the same command again" in text and "interrupted (SIGTERM)" in text
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


SIGNAL_UNIT = textwrap.dedent("""
    import os, signal, sys, time
    if sys.argv[1] == "ignored":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script does
    from raydf import signals
    signals.install()
    if sys.argv[1] == "ignored":
        print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)
        sys.exit(0)
    partial = sys.argv[2]
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except signals.Stopped as stop:
        print("stopped", stop.exit_code, flush=True)
        with signals.partial_file(partial):  # the clean-up writes a file, slowly
            open(partial, "w").write("half")
            os.kill(os.getpid(), signal.SIGINT)  # a second signal: no waiting for the clean-up
            time.sleep(5)
        print("not reached", flush=True)
""")


def test_second_signal_exits_at_once_and_removes_partial_files(tmp_path):
    script = tmp_path / "unit.py"
    script.write_text(SIGNAL_UNIT)
    partial = tmp_path / "out.csv.tmp"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
    proc = start_signalable(
        [sys.executable, str(script), "second", str(partial)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143  # the first signal's code
    assert out.split() == ["stopped", "143"] and "second SIGINT" in err
    assert not partial.exists()


def test_a_signal_ignored_at_start_stays_ignored(tmp_path):
    """The Unix convention: `cmd &` in a script starts cmd with SIGINT ignored; raydf does not take it back."""
    script = tmp_path / "unit.py"
    script.write_text(SIGNAL_UNIT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
    proc = start_signalable([sys.executable, str(script), "ignored"], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert out.split() == ["True", "False"]  # SIGINT still ignored, SIGTERM handled


SHUTDOWN_UNIT = textwrap.dedent("""
    import ctypes, os, signal, sys
    if sys.argv[1] == "ray-first":  # a script or notebook that imported Ray before raydf took the signals
        import ray
    from raydf import signals
    signals.install()  # as every command does first
    import ray

    def c_level_sigterm() -> int:  # the handler the kernel runs, not Python's record of it (getsignal)
        action = ctypes.create_string_buffer(256)  # struct sigaction: the handler pointer comes first
        assert ctypes.CDLL(None, use_errno=True).sigaction(signal.SIGTERM, None, action) == 0
        return int.from_bytes(action.raw[:8], "little")

    ray.init(address="local", include_dashboard=False, num_cpus=1)
    signals.reinstall()
    ray.shutdown()
    print("SIG_DFL" if c_level_sigterm() == 0 else "handled", flush=True)
""")


@pytest.mark.parametrize("order", ["raydf-first", "ray-first"])
def test_ray_shutdown_leaves_sigterm_to_raydf(tmp_path, order):
    """Ray's core worker resets SIGTERM to its default action inside ray.shutdown when it installed its failure
    signal handler: a second signal while a stopped run ended its Ray session then killed the driver at once
    (exit -15, no clean-up; seen in the signal chains). raydf tells Ray not to install it, also when Ray was
    imported first (the signal chains' driver script did that, and failed 1 run in 5)."""
    script = tmp_path / "shutdown.py"
    script.write_text(SHUTDOWN_UNIT)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
    env.pop("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    proc = subprocess.run([sys.executable, str(script), order], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["handled"]
