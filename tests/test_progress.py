"""Live progress: events from fold tasks reach the driver."""

import numpy as np

from conftest import tiny_overrides
from raydf.config import load_config


def test_progress_events_arrive_at_the_driver_from_the_fold_tasks(ray_local, tiny_demo, tmp_path):
    from raydf.distributed.folds import run_folds

    cfg = load_config(None, tiny_overrides(tmp_path / "p", tiny_demo) + ["train.epochs=2", "train.patience=5"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 96, 96, 3), dtype=np.uint8)
    labels = np.arange(40) % 2
    splits = [(np.arange(20, 40), np.arange(0, 20)), (np.arange(0, 20), np.arange(20, 40))]
    batches: list[list[dict]] = []
    done_folds: list[int] = []
    results = run_folds(ray_local.put(images), ray_local.put(labels), splits, cfg, {"num_cpus": 1, "num_gpus": 0},
                        on_done=lambda info, ref: done_folds.append(info["fold"]), on_events=batches.append,
                        poll_seconds=0.2)

    events = [e for batch in batches for e in batch]
    assert len(batches) > len(events) / 2  # polled while waiting, not once at the end
    for k, (_, info) in enumerate(results):
        mine = [e for e in events if e["fold"] == k]
        assert [e["type"] for e in mine] == ["start", "epoch", "epoch", "done"]
        assert mine[0]["pid"] == info["pid"]  # sent by the fold task's own process
        assert [e["epoch"] for e in mine[1:3]] == [1, 2]
        for e, row in zip(mine[1:3], info["history"]):  # the values the fold recorded, epoch by epoch
            assert {key: e[key] for key in row} == row
        assert mine[3]["best_epoch"] == info["best_epoch"] and mine[3]["val_loss"] == info["val_loss"]
    assert sorted(done_folds) == [0, 1]
