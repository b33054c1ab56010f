"""Test helper run in its own process against a cluster (`python ddp_fold_driver.py ADDRESS OUT DEMO_TRAIN RUN_DIR`):
a data-parallel fold that no node can hold is refused by `raydf.pipelines.training.train` before the pre-flight,
then one data-parallel fold (2 gloo workers) trains through `run_folds`; what it saw is written to OUT as JSON.

In a process of its own because the test process keeps the session's local Ray instance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
import torch

from raydf.config import load_config
from raydf.distributed.folds import run_folds
from raydf.errors import ConfigError
from raydf.pipelines.training import train
from raydf.runs.storage import RunStorage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import separable_images  # noqa: E402
from test_data_parallel import OVERRIDES, TRAIN_IDX, VAL_IDX  # noqa: E402


def main(address: str, out: str, demo_train: str, run_dir: str) -> None:
    ray.init(address=address, log_to_driver=False)
    seen: dict = {}
    refused = load_config(
        None,
        OVERRIDES
        + [
            f"data.train={demo_train}",
            f"run_dir={run_dir}/refused",
            "data.faces=off",
            "resources.workers_per_fold=3",
            "train.batch_size=12",
        ],
    )
    try:
        train(refused)
    except ConfigError as e:
        seen["refused"] = str(e)
    seen["refused_run_dir_exists"] = Path(run_dir, "refused").exists()

    images, labels = separable_images(36, 36)
    cfg = load_config(None, OVERRIDES + ["resources.workers_per_fold=2"])
    events: list = []
    storage = RunStorage(Path(run_dir, "run"))
    results = run_folds(
        ray.put(images),
        ray.put(labels),
        {0: (TRAIN_IDX, VAL_IDX)},
        cfg,
        {"num_cpus": 1, "num_gpus": 0},
        storage,
        on_events=events.extend,
    )
    weights_ref, info = results[0]
    torch.save({k: torch.from_numpy(v.copy()) for k, v in ray.get(weights_ref).items()}, f"{out}.weights.pt")
    seen.update(
        {k: info[k] for k in ("workers", "placement", "worker_node_ids", "history")},
        val_prob_fake=info["val_prob_fake"].tolist(),
        nodes=[n["NodeID"] for n in ray.nodes() if n["Alive"]],
        events=[(e["type"], e.get("epoch")) for e in events if e.get("fold") == 0],
        state_saved=storage.exists("state/fold0.pt"),
    )
    Path(out).write_text(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:])
