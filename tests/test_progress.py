"""Live progress: events from fold tasks reach the driver; the display and the TensorBoard files they feed."""

import io
import logging
import time

import numpy as np
import pytest
from conftest import tiny_overrides

from raydf.config import load_config
from raydf.runs.console import CountProgress, FoldProgress
from raydf.runs.tensorboard_log import TensorBoardLog


def _epoch(fold, epoch, epochs=3, t=None, **over):
    row = {
        "type": "epoch",
        "fold": fold,
        "epoch": epoch,
        "epochs": epochs,
        "time": t or time.time(),
        "train_loss": 0.7 - 0.1 * epoch,
        "train_acc": 0.5 + 0.1 * epoch,
        "val_loss": 0.8 - 0.1 * epoch,
        "val_acc": 0.55 + 0.1 * epoch,
        "lr": 1e-3 / epoch,
        "seconds": 1.5,
        "best_epoch": epoch,
    }
    return row | over


def test_progress_events_arrive_at_the_driver_from_the_fold_tasks(ray_local, tiny_demo, tmp_path):
    from raydf.distributed.folds import run_folds

    cfg = load_config(None, tiny_overrides(tmp_path / "p", tiny_demo) + ["train.epochs=2", "train.patience=5"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 96, 96, 3), dtype=np.uint8)
    labels = np.arange(40) % 2
    splits = {0: (np.arange(20, 40), np.arange(0, 20)), 1: (np.arange(0, 20), np.arange(20, 40))}
    batches: list[list[dict]] = []
    done_folds: list[int] = []
    results = run_folds(
        ray_local.put(images),
        ray_local.put(labels),
        splits,
        cfg,
        {"num_cpus": 1, "num_gpus": 0},
        on_done=lambda info, ref: done_folds.append(info["fold"]),
        on_events=batches.append,
        poll_seconds=0.2,
    )

    events = [e for batch in batches for e in batch]
    assert len(batches) > len(events) / 2  # polled while waiting, not once at the end
    for k, (_, info) in results.items():
        mine = [e for e in events if e["fold"] == k]
        assert [e["type"] for e in mine] == ["start", "epoch", "epoch", "done"]
        assert mine[0]["pid"] == info["pid"]  # sent by the fold task's own process
        assert [e["epoch"] for e in mine[1:3]] == [1, 2]
        for e, row in zip(mine[1:3], info["history"]):  # the values the fold recorded, epoch by epoch
            assert {key: e[key] for key in row} == row
        assert mine[3]["best_epoch"] == info["best_epoch"] and mine[3]["val_loss"] == info["val_loss"]
    assert sorted(done_folds) == [0, 1]


def test_plain_mode_logs_one_line_per_event_with_metrics_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="raydf.runs.console")
    t0 = time.time()
    with FoldProgress(2, 3, live=False) as display:
        display([{"type": "start", "fold": 0, "time": t0, "node_id": "abcdef0123456789", "pid": 42}])
        display([_epoch(0, 1, t=t0 + 10)])
        display([])  # a tick without events prints nothing
        display(
            [
                {
                    "type": "done",
                    "fold": 0,
                    "time": t0 + 20,
                    "best_epoch": 1,
                    "val_loss": 0.7,
                    "val_acc": 0.65,
                    "epochs_run": 2,
                }
            ]
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "raydf.runs.console"]
    assert lines == [
        "fold 0 started (node abcdef01, pid 42)",
        "fold 0 epoch 1/3: train loss 0.6000 | val loss 0.7000 acc 0.650 | best epoch 1 | 1.5s this epoch | ETA 00:20",
        "fold 0 done: best epoch 1, val loss 0.7000, val acc 0.650 (2 epochs, 00:20)",
    ]


def test_a_retried_fold_keeps_its_epochs_and_says_it_resumes(caplog):
    caplog.set_level(logging.INFO, logger="raydf.runs.console")
    t0 = time.time()
    with FoldProgress(1, 4, live=False) as display:
        display([{"type": "start", "fold": 0, "time": t0}, _epoch(0, 1, t=t0 + 10), _epoch(0, 2, t=t0 + 20)])
        display([{"type": "start", "fold": 0, "time": t0 + 25}])  # the worker died during epoch 3
        display([_epoch(0, 3, t=t0 + 35)])
        display(
            [
                {
                    "type": "done",
                    "fold": 0,
                    "time": t0 + 45,
                    "best_epoch": 3,
                    "val_loss": 0.7,
                    "val_acc": 0.65,
                    "epochs_run": 4,
                }
            ]
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "raydf.runs.console"]
    assert "fold 0 started (node ?, pid ?, attempt 2, resuming after epoch 2)" in lines
    assert "epoch 3/4" in lines[-2] and lines[-2].endswith("ETA 00:10")  # this attempt's pace: 10 s an epoch
    assert lines[-1].endswith("(4 epochs, 00:45)")  # from the first attempt's start


def test_terminal_mode_draws_a_bar_per_fold(caplog, monkeypatch):
    """On an 80-column terminal (the narrowest common one) each bar still shows the ETA and validation numbers."""
    monkeypatch.setenv("COLUMNS", "80")  # the size tqdm is given when the stream reports none
    caplog.set_level(logging.INFO, logger="raydf.runs.console")
    out = io.StringIO()
    with FoldProgress(2, 4, live=True, stream=out) as display:
        display([{"type": "start", "fold": 1, "time": time.time()}, _epoch(1, 2, epochs=4)])
    screen = out.getvalue()
    assert "fold 0" in screen and "waiting to start" in screen
    assert "fold 1" in screen and "2/4 epochs" in screen and "val loss 0.6000 acc 0.750" in screen
    assert "ETA" in screen and not caplog.records  # the bars replace the log lines
    assert max(len(line.strip("\r")) for line in screen.replace("\x1b[A", "\n").split("\n")) <= 80


def test_quiet_mode_shows_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="raydf.runs.console")
    out = io.StringIO()
    with FoldProgress(1, 2, live=True, stream=out) as display, CountProgress(10, "x", live=True, stream=out) as n:
        display([_epoch(0, 1)])
        n.update(10)
    assert out.getvalue() == "" and not caplog.records


def test_count_progress_logs_when_done(caplog):
    caplog.set_level(logging.INFO, logger="raydf.runs.console")
    with CountProgress(300, "soft vote of 2 folds", live=False, every=3600) as progress:
        for _ in range(3):
            progress.update(100)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("soft vote of 2 folds: 300/300 images (100%)")


def test_tensorboard_files_hold_every_epoch_of_every_fold(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLog(tmp_path) as tb:
        tb([{"type": "start", "fold": 0, "time": time.time()}, _epoch(0, 1), _epoch(1, 1)])
        tb([_epoch(0, 2)])
    for fold, epochs in ((0, [1, 2]), (1, [1])):
        acc = EventAccumulator(str(tmp_path / f"fold{fold}")).Reload()
        assert set(acc.Tags()["scalars"]) == {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"}
        val_loss = acc.Scalars("loss/val")
        assert [s.step for s in val_loss] == epochs
        assert [s.value for s in val_loss] == pytest.approx([0.8 - 0.1 * e for e in epochs])
