"""Hyperparameter sweeps: the search space in the config, folds in lockstep, the trial table, Ray Tune + ASHA,
an interrupted sweep resumed, GPUs that are not there."""

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import separable_images, start_signalable, tiny_overrides, wait_for
from ray_processes import kill_session

from raydf.config import load_config, to_dict
from raydf.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


# --- the search space in the config ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "tune.space[model.dropuot]={type: uniform, low: 0.1, high: 0.2}",
            r"'model\.dropuot' is not a config key.*Did you mean 'model\.dropout'",
        ),
        ("tune.space[train.epochs]={type: choice, values: [2, 4]}", r"tune\.space\[train\.epochs\].*cannot be tuned"),
        ("tune.space[optim.lr].type=gaussian", r"tune\.space\[optim\.lr\].*one of loguniform, uniform, randint"),
        ("tune.space[optim.lr].hi=0.1", r"tune\.space\[optim\.lr\].*unknown: hi"),
        ("tune.space[model.dropout].high=1.5", r"tune\.space\[model\.dropout\].*1\.5.*must be in \[0, 1\)"),
        ("tune.space[sched.t_max]={type: uniform, low: 2, high: 9}", r"tune\.space\[sched\.t_max\].*integer"),
        ("tune.space[optim.lr].low=0", r"tune\.space\[optim\.lr\].*loguniform needs low > 0"),
        ("tune.space[sched.t_max]={type: choice, values: []}", r"tune\.space\[sched\.t_max\].*non-empty"),
        ("tune.folds=[0,5]", r"tune\.folds"),
        ("tune.gpus_per_trial=2", r"tune\.gpus_per_trial"),
    ],
)
def test_bad_search_space_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tune", [override])


def test_search_space_can_be_narrowed_widened_and_extended():
    cfg = load_config(
        "tune",
        [
            "tune.space[optim.lr].high=0.1",
            "tune.space[sched.t_max]=null",
            "tune.space[model.dropout]={type: choice, values: [0.2, 0.5]}",
            "tune.space[optim.weight_decay]={type: loguniform, low: 1e-6, high: 1e-3}",
        ],
    )
    assert cfg.tune.space == {
        "optim.lr": {"type": "loguniform", "low": 3e-4, "high": 0.1},
        "model.dropout": {"type": "choice", "values": [0.2, 0.5]},  # no stale low/high
        "optim.weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-3},
    }


def test_self_blending_and_its_settings_can_be_searched():
    cfg = load_config(
        "tune",
        [
            "tune.space[data.synthetic_fakes]={type: choice, values: [off, add, only]}",
            "tune.space[synth.share]={type: uniform, low: 0.3, high: 0.7}",
            "tune.space[synth.mask_scale]={type: uniform, low: 0.8, high: 1.2}",
        ],
    )
    assert {"data.synthetic_fakes", "synth.share", "synth.mask_scale"} <= set(cfg.tune.space)


def test_baseline_trial_runs_the_configs_own_values():
    from raydf.runs.sweep_table import baseline_point

    cfg = load_config("tune", ["optim.lr=0.002", "tune.space[sched.t_max]={type: grid, values: [2, 4]}"])
    assert baseline_point(cfg) == {"optim.lr": 0.002, "model.dropout": 0.6}  # grid keys: every value is run
    assert baseline_point(load_config("tune", ["tune.baseline=false"])) == {}


def test_randint_bounds_are_inclusive():
    from raydf.distributed.tune import search_space

    domain = search_space({"sched.t_max": {"type": "randint", "low": 2, "high": 4}})["sched.t_max"]
    assert set(domain.sample(size=300)) == {2, 3, 4}


# --- folds in lockstep (no Ray) ---------------------------------------------------------------------------


def test_folds_in_lockstep_compute_what_they_compute_alone(tmp_path):
    from raydf.runs.storage import RunStorage
    from raydf.training.fold_loop import train_fold
    from raydf.training.fold_state import FoldStateStore
    from raydf.training.lockstep import lockstep_folds

    images, labels = separable_images()
    cfg = load_config(
        None,
        [
            "data.resize=80",
            "data.crop=76",
            "train.batch_size=10",
            "train.epochs=2",
            "train.patience=5",
            "optim.lr=0.01",
            "model.name=test_efficientnet",
        ],
    )
    splits = {0: (np.arange(20, 40), np.arange(20)), 1: (np.arange(20), np.arange(20, 40))}
    alone = {k: train_fold(images, labels, *splits[k], cfg, k).history for k in splits}
    storage = RunStorage(tmp_path)
    stores = {k: FoldStateStore(storage, k) for k in splits}
    reports = []
    for report in lockstep_folds(images, labels, splits, cfg, stores):
        # Between epochs every fold is paused with that epoch's state saved: what a Tune checkpoint copies.
        assert all(storage.exists(stores[k].current) for k in splits)
        reports.append(report)
    assert [stores[k].load()["epoch"] for k in splits] == [2, 2]
    assert [r["epoch"] for r in reports] == [1, 2]
    assert [r["folds_training"] for r in reports] == [2, 0]
    for r in reports:  # the trial's metric: the mean of its folds' validation losses in that epoch
        e = r["epoch"] - 1
        assert r["val_loss"] == pytest.approx((alone[0][e]["val_loss"] + alone[1][e]["val_loss"]) / 2, rel=1e-6)


# --- the trial table, the plot and best.yaml (no Ray) -----------------------------------------------------


def _records():
    def epochs(*losses, going_on=True):
        rows = []
        for i, v in enumerate(losses):
            best = min(range(i + 1), key=lambda j: losses[j])
            rows.append(
                {
                    "epoch": i + 1,
                    "val_loss": v,
                    "val_acc": 0.5 + i / 10,
                    "folds_training": int(going_on or i + 1 < len(losses)),
                    "best_val_loss": losses[best],
                    "best_val_acc": 0.5 + best / 10,
                    "best_epoch": best + 1,
                }
            )
        return rows

    p = lambda lr, dropout, t_max: {"optim.lr": lr, "model.dropout": dropout, "sched.t_max": t_max}  # noqa: E731
    return [
        {"trial": "t_full", "params": p(1e-3, 0.3, 4), "epochs": epochs(0.60, 0.50, 0.55, 0.52), "error": None},
        {"trial": "t_asha", "params": p(2e-2, 0.6, 2), "epochs": epochs(0.90), "error": None},
        {"trial": "t_patience", "params": p(5e-4, 0.2, 8), "epochs": epochs(0.58, 0.61, going_on=False), "error": None},
        {"trial": "t_diverged", "params": p(3e-2, 0.1, 3), "epochs": epochs(1e9), "error": None},
        {"trial": "t_error", "params": p(1e-3, 0.5, 5), "epochs": [], "error": "RuntimeError: out of memory"},
    ]


def test_trial_table_ranks_trials_and_says_why_they_stopped():
    from raydf.runs.sweep_table import best_row, trials_table

    config_values = {"optim.lr": 5e-4, "model.dropout": 0.2, "sched.t_max": 8}  # what t_patience ran
    table = trials_table(_records(), ["optim.lr", "model.dropout", "sched.t_max"], 4, baseline=config_values)
    assert table["trial"].tolist() == ["t_full", "t_patience", "t_asha", "t_diverged", "t_error"]
    assert table["baseline"].tolist() == [False, True, False, False, False]
    row = table.set_index("trial")
    assert row.loc["t_full", ["best_val_loss", "val_acc", "best_epoch"]].tolist() == [0.50, 0.6, 2]
    assert row.loc[["t_full", "t_asha", "t_patience", "t_diverged", "t_error"], "status"].tolist() == [
        "done",
        "asha",
        "patience",
        "asha",
        "error",
    ]
    assert row["stopped_early"].tolist() == [False, True, True, True, True]
    assert row.loc["t_diverged", "diverged"] and not row.loc["t_full", "diverged"]
    assert best_row(table)["trial"] == "t_full"


def test_best_yaml_is_a_training_config_that_loads_unchanged(tmp_path):
    from raydf.runs.sweep_table import best_config, best_row, best_yaml, history_frame, plot_sweep, trials_table

    cfg = load_config("tune", [f"run_dir={tmp_path}/sweep"])
    records = _records()
    table = trials_table(records, list(cfg.tune.space), cfg.train.epochs)
    row = best_row(table)
    best = best_config(cfg, {k: row[k] for k in cfg.tune.space}, f"{tmp_path}/sweep/train")
    path = tmp_path / "best.yaml"
    path.write_text(best_yaml(best, cfg.run_dir, row, list(cfg.tune.space)))
    loaded = load_config(path)
    assert to_dict(loaded) == to_dict(best)
    assert (loaded.optim.lr, loaded.model.dropout, loaded.sched.t_max) == (1e-3, 0.3, 4)
    assert loaded.run_dir == f"{tmp_path}/sweep/train" and loaded.resume is None
    png = plot_sweep(table, history_frame(records), cfg.tune.space, cfg.train.epochs)
    assert png.startswith(b"\x89PNG")


# --- sweeps on a real local Ray instance ------------------------------------------------------------------

GOOD_LR, ABSURD_LRS = 1e-3, [3.0, 30.0]


def _sweep_overrides(run_dir, demo, epochs=3):
    return [o for o in tiny_overrides(run_dir, demo) if not o.startswith("train.epochs=")] + [
        f"train.epochs={epochs}",
        f"train.patience={epochs}",
        "tune.gpus_per_trial=0",
        "tune.num_samples=1",
        "tune.max_concurrent=1",
        "tune.grace_period=1",
        "tune.reduction_factor=2",
        "tune.folds=[0]",
    ]


@pytest.fixture(scope="module")
def sweep(ray_local, tiny_demo, tmp_path_factory):
    """A grid over lr, a good value first and absurd ones after, one trial at a time, 3 epochs, then the
    K-fold training with the best configuration (a minute or two: the tests on it are marked slow).

    ASHA (grace 1, reduction factor 2, max_t 3) has rungs at epochs 1 and 2 and stops a trial whose loss at a
    rung is worse than the median of the losses recorded there before it (ray/tune/schedulers/
    async_hyperband.py, _Bracket.on_result). The good trial runs first and records its epoch-1 loss; the
    lr=3 trial's epoch-1 loss (astronomical) is worse, so ASHA stops it after epoch 1, deterministically.
    """
    from raydf.pipelines.sweep import run_sweep

    run_dir = tmp_path_factory.mktemp("sweeps") / "grid"
    grid = "{type: grid, values: [" + ", ".join(str(v) for v in [GOOD_LR, *ABSURD_LRS]) + "]}"
    cfg = load_config(
        "tune",
        _sweep_overrides(run_dir, tiny_demo)
        + [f"tune.space[optim.lr]={grid}", "tune.then_train=true", "tune.baseline=false"],
    )
    handlers = lambda: {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}  # noqa: E731
    before = handlers()
    assert run_sweep(cfg) == str(run_dir)
    return run_dir, cfg, (before, handlers())


@pytest.mark.slow
def test_a_finished_sweep_gives_ctrl_c_back(sweep):
    # Ray Tune puts its own SIGINT/SIGUSR1 handler in and leaves it there after a sweep no signal stopped: a
    # Ctrl-C during a later training in this process only set Tune's flag, and the run trained on to the end.
    _, _, (before, after) = sweep
    assert after == before


@pytest.mark.slow
def test_sweep_writes_table_plot_and_a_best_config_inside_the_space(sweep):
    run_dir, cfg, _ = sweep
    table = pd.read_csv(run_dir / "trials.csv")
    assert len(table) == 3 and sorted(table["optim.lr"]) == sorted([GOOD_LR, *ABSURD_LRS])
    assert {"best_val_loss", "epochs_run", "stopped_early", "status"} <= set(table.columns)
    assert (run_dir / "sweep.png").read_bytes().startswith(b"\x89PNG")

    best = load_config(run_dir / "best.yaml")  # loads into training as it is
    winner = table.loc[table["best_val_loss"].idxmin()]
    assert (best.optim.lr, best.model.dropout, best.sched.t_max) == (
        winner["optim.lr"],
        winner["model.dropout"],
        winner["sched.t_max"],
    )
    space = cfg.tune.space
    assert best.optim.lr in space["optim.lr"]["values"]
    assert space["model.dropout"]["low"] <= best.model.dropout <= space["model.dropout"]["high"]
    assert space["sched.t_max"]["low"] <= best.sched.t_max <= space["sched.t_max"]["high"]
    assert best.run_dir == f"{run_dir}/train"  # never the sweep's own (non-empty) directory
    assert (best.data.train, best.train.epochs) == (cfg.data.train, cfg.train.epochs)


@pytest.mark.slow
def test_asha_stops_a_bad_trial_at_the_first_rung(sweep):
    run_dir, _, _ = sweep
    table = pd.read_csv(run_dir / "trials.csv").set_index("optim.lr")
    assert table.loc[GOOD_LR, "epochs_run"] == 3 and table.loc[GOOD_LR, "status"] == "done"
    assert table.loc[ABSURD_LRS[0], "epochs_run"] == 1 and table.loc[ABSURD_LRS[0], "status"] == "asha"
    assert table.loc[GOOD_LR, "best_val_loss"] < table.loc[ABSURD_LRS[0], "best_val_loss"]


@pytest.mark.slow
def test_trials_keep_one_checkpoint_of_their_fold_states(sweep):
    run_dir, _, _ = sweep
    for trial in glob.glob(str(run_dir / "tune" / "trial_*")):
        checkpoints = glob.glob(f"{trial}/checkpoint_*")
        assert len(checkpoints) == 1, checkpoints  # num_to_keep=1: a fold state is ~300 MB
        assert sorted(os.listdir(f"{checkpoints[0]}/state")) == ["fold0.pt"]


@pytest.mark.slow
def test_then_train_trains_all_folds_with_the_best_config(sweep):
    run_dir, _, _ = sweep
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1] and "cv" in summary
    assert to_dict(load_config(run_dir / "train" / "config.yaml")) == to_dict(load_config(run_dir / "best.yaml"))


def test_gpus_requested_on_a_cluster_without_gpus_fail_at_once(tiny_demo, tmp_path):
    run_dir = tmp_path / "gpu"
    # The CLI starts its own local Ray instance; with no CUDA device visible it has no GPU.
    env = dict(os.environ, RAY_AUTH_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    overrides = [o for o in _sweep_overrides(run_dir, tiny_demo) if not o.startswith("tune.gpus_per_trial")]
    proc = subprocess.run(
        [sys.executable, "-m", "raydf.tune", *overrides, "tune.gpus_per_trial=1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # Tune alone would wait forever
    assert proc.returncode == 2
    assert "tune.gpus_per_trial=1 but no node has a GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()  # refused before anything was written


def _trial_states(run_dir: Path) -> dict[str, str]:
    """{trial id: the experiment-state entry} of the last sweep snapshot Tune saved ({} before the first)."""
    try:
        state = json.loads(sorted(run_dir.glob("tune/experiment_state-*.json"))[-1].read_text())
        return {json.loads(meta)["trial_id"]: meta + run for meta, run in state["trial_data"]}
    except (IndexError, ValueError, KeyError, OSError):
        return {}


def _scratch_dirs() -> set[str]:
    return set(glob.glob(f"{tempfile.gettempdir()}/raydf-tune-*"))


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(tiny_demo, tmp_path):
    run_dir = tmp_path / "sweep"
    scratch_before = _scratch_dirs()
    # 5 epochs: the kill below lands after the second trial's first checkpoint shows in Tune's snapshot, and a
    # quiet machine ran the rest of a 2-epoch trial before the kill took effect (CI, 2026-12-04): the second trial
    # then had nothing left to restore. 4 epochs after its first checkpoint leave the kill time to land.
    overrides = _sweep_overrides(run_dir, tiny_demo, epochs=5) + [
        "tune.space[optim.lr]={type: grid, values: [0.001, 0.002]}",
        "tune.grace_period=5",
    ]  # no ASHA stops
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    driver = subprocess.Popen(
        [sys.executable, "-m", "raydf.tune", *overrides],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def first_finished_second_checkpointed():
        states = _trial_states(run_dir)
        first = [s for t, s in states.items() if t.endswith("_00000")]
        second = [s for t, s in states.items() if t.endswith("_00001")]
        # As Tune's last snapshot has them: what a restore starts from.
        # Any of the second trial's checkpoints while it still runs (the snapshot need not catch its first one).
        return (
            first
            and '"status": "TERMINATED"' in first[0]
            and second
            and "checkpoint_0000" in second[0]
            and '"status": "TERMINATED"' not in second[0]
        )

    try:
        assert wait_for(first_finished_second_checkpointed, timeout=300.0)
    finally:
        kill_session(driver.pid)  # kill -9 the driver, its Ray instance and the trials
        driver.wait()
    assert not (run_dir / "trials.csv").exists()
    [first] = run_dir.glob("tune/trial_*_00000")
    [second] = run_dir.glob("tune/trial_*_00001")
    first_results = (first / "result.json").read_text()

    log = tmp_path / "resume.err"  # kept for the failure message, also when the resume runs out of time
    with open(log, "w") as err:
        resume = subprocess.Popen(
            [sys.executable, "-m", "raydf.tune", f"resume={run_dir}"],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            code = resume.wait(timeout=400)
        except subprocess.TimeoutExpired:
            kill_session(resume.pid)
            raise AssertionError(f"the resume ran past 400 s:\n{log.read_text()[-6000:]}") from None
    assert code == 0, log.read_text()[-3000:]
    assert (first / "result.json").read_text() == first_results  # the finished trial did not run again
    # (Rows Tune had not flushed to result.json when it was killed are lost; those it wrote stay.)
    last = [json.loads(line) for line in (second / "result.json").read_text().splitlines()][-1]
    # The last epochs ran after the restore, from a checkpoint: the second trial was not started over.
    assert (last["epoch"], last["training_iteration"]) == (5, 5) and 1 <= last["iterations_since_restore"] < 5
    table = pd.read_csv(run_dir / "trials.csv")
    assert table["epochs_run"].tolist() == [5, 5] and (run_dir / "best.yaml").exists()
    cfg = load_config(run_dir / "config.yaml")  # tune.baseline: the first (only) sample ran the config's values
    assert (table["model.dropout"] == cfg.model.dropout).all() and (table["sched.t_max"] == cfg.sched.t_max).all()
    # The killed driver's trials left their working fold states (~300 MB each) in /tmp: the resume removed them.
    assert not [d for d in _scratch_dirs() - scratch_before if glob.glob(f"{d}/trial-*")]


@pytest.mark.slow
def test_sigterm_stops_a_sweep_gracefully_and_it_resumes(tiny_demo, tmp_path):
    """SIGTERM (kill, timeout, a scheduler's preemption) gets Tune's graceful stop, like Ctrl-C: the sweep's state
    is saved, the resume command printed, exit 143; `resume=` then finishes it."""
    run_dir = tmp_path / "sweep"
    overrides = _sweep_overrides(run_dir, tiny_demo, epochs=2) + ["tune.grace_period=2"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    driver = start_signalable(
        [sys.executable, "-m", "raydf.tune", *overrides],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: any("checkpoint_000000" in s for s in _trial_states(run_dir).values()), timeout=300)
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 143, err[-3000:]
    assert f"python -m raydf.tune resume={run_dir}" in err and "Traceback" not in err
    assert not (run_dir / "trials.csv").exists()
    assert not [p for p in run_dir.rglob("*.tmp")]

    proc = subprocess.run(
        [sys.executable, "-m", "raydf.tune", f"resume={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pd.read_csv(run_dir / "trials.csv")["epochs_run"].tolist() == [2]


def test_a_sweep_chooses_between_backbones(ray_local, tiny_demo, tmp_path):
    """`model.name` as a grid: each trial builds its own network, the table and plot take the names, and
    best.yaml names one of them."""
    from raydf.pipelines.sweep import run_sweep

    run_dir = tmp_path / "backbones"
    overrides = [o for o in _sweep_overrides(run_dir, tiny_demo, epochs=1) if not o.startswith("model.name=")]
    cfg = load_config(
        "tune",
        overrides
        + [
            "tune.space={}",
            "tune.space[model.name]={type: grid, values: [test_efficientnet, test_resnet]}",
            "tune.baseline=false",
        ],
    )
    run_sweep(cfg)
    table = pd.read_csv(run_dir / "trials.csv")
    assert sorted(table["model.name"]) == ["test_efficientnet", "test_resnet"]
    assert (table["status"] == "done").all()
    assert (run_dir / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert load_config(run_dir / "best.yaml").model.name == table.loc[table["best_val_loss"].idxmin(), "model.name"]
