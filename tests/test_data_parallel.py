"""Data-parallel folds: the plain PyTorch part in two gloo processes (no Ray), and one fold through Ray Train."""

import json
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import separable_images

from raydf.config import load_config

# GroupNorm, no BatchNorm: the statistics of each share of the batch would differ from the whole batch's, so only a
# network without batch statistics computes exactly what one worker computes (as with resources.sync_bn on GPUs).
OVERRIDES = [
    "model.name=test_efficientnet_gn",
    "model.dropout=0",
    "data.resize=36",
    "data.crop=32",
    "train.augment=false",
    "train.precision=fp32",
    "train.batch_size=8",
    "train.eval_batch_size=4",
    "train.epochs=2",
    "train.patience=5",
    "optim.lr=0.01",
    "resources.gpus_per_fold=0",
]
TRAIN_IDX, VAL_IDX = np.arange(11, 36), np.arange(0, 11)  # 25 rows: 3 global batches of 8, one row dropped


def _cfg(*extra):
    return load_config(None, OVERRIDES + list(extra))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, epochs: int = 2, state_dir: str = "") -> None:
    """One rank of a data-parallel fold, started by torch.multiprocessing; records the rows it loaded.

    With `state_dir` the fold keeps its state there (and resumes from it)."""
    import torch.distributed as dist

    from raydf.data.dataset import ImageArrayDataset
    from raydf.runs.storage import RunStorage
    from raydf.training.data_parallel import DataParallel
    from raydf.training.fold_loop import train_fold
    from raydf.training.fold_state import FoldStateStore

    torch.set_num_threads(1)
    loaded = []
    getitem = ImageArrayDataset.__getitem__

    def counting(self, i):
        loaded.append((self.seed is not None, int(self.indices[i])))  # (training set?, row)
        return getitem(self, i)

    ImageArrayDataset.__getitem__ = counting
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        images, labels = separable_images(36, 36)
        dp = DataParallel(rank, world, torch.device("cpu"))
        state = FoldStateStore(RunStorage(state_dir), 0) if state_dir else None
        cfg = _cfg(f"train.epochs={epochs}")
        outcome = train_fold(images, labels, TRAIN_IDX, VAL_IDX, cfg, fold=0, data_parallel=dp, state=state)
        torch.save({"outcome": outcome.__dict__, "loaded": loaded}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_compute_the_epochs_of_one_worker_on_the_same_global_batch(tmp_path):
    from raydf.data.dataset import ImageArrayDataset
    from raydf.training.fold_loop import train_fold

    loaded = []
    getitem = ImageArrayDataset.__getitem__

    def counting(self, i):
        loaded.append((self.seed is not None, int(self.indices[i])))
        return getitem(self, i)

    images, labels = separable_images(36, 36)
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setattr(ImageArrayDataset, "__getitem__", counting)
        one = train_fold(images, labels, TRAIN_IDX, VAL_IDX, _cfg(), fold=0)
    # Forked after the libraries are imported (seconds each under spawn); the ranks use no Ray.
    out = str(tmp_path / "rank")
    mp.start_processes(_rank, args=(2, _free_port(), out), nprocs=2, start_method="fork")
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    dp = ranks[0]["outcome"]

    # What is computed: the same losses, accuracies, learning rates, validation probabilities and best weights.
    for a, b in zip(one.history, dp["history"], strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "best_epoch"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)
    assert dp["best_epoch"] == one.best_epoch and dp["val_loss"] == pytest.approx(one.val_loss, rel=1e-5)
    np.testing.assert_allclose(dp["val_prob_fake"], one.val_prob_fake, rtol=1e-5, atol=1e-6)
    assert dp["weights"].keys() == one.weights.keys()
    for name, w in one.weights.items():
        np.testing.assert_allclose(dp["weights"][name], w, rtol=1e-4, atol=1e-6, err_msg=name)
    assert ranks[1]["outcome"]["weights"] == {}  # rank 0 alone hands the weights back

    # The work is split: each rank loaded half of every global batch (the two halves make the batch one worker
    # loaded) and its share of the validation rows, once per epoch.
    train_one = [row for is_train, row in loaded if is_train]
    per_rank = [[row for is_train, row in r["loaded"] if is_train] for r in ranks]
    assert len(train_one) == 2 * 24 and [len(p) for p in per_rank] == [24, 24]
    batches = [train_one[i : i + 8] for i in range(0, 48, 8)]
    shares = [per_rank[0][i : i + 4] + per_rank[1][i : i + 4] for i in range(0, 24, 4)]
    assert shares == batches
    val_per_rank = [[row for is_train, row in r["loaded"] if not is_train] for r in ranks]
    assert val_per_rank == [list(VAL_IDX[:6]) * 2, list(VAL_IDX[6:]) * 2]  # 6 + 5 rows, each epoch

    # Stopped after epoch 1 (its state saved), resumed to epoch 2 by new processes: the same weights again.
    state_dir = str(tmp_path / "run")
    mp.start_processes(_rank, args=(2, _free_port(), out, 1, state_dir), nprocs=2, start_method="fork")
    mp.start_processes(_rank, args=(2, _free_port(), out, 2, state_dir), nprocs=2, start_method="fork")
    resumed = torch.load(f"{out}.0", weights_only=False)["outcome"]
    assert resumed["resumed_from_epoch"] == 1 and [h["epoch"] for h in resumed["history"]] == [1, 2]
    for name, w in one.weights.items():
        np.testing.assert_allclose(resumed["weights"][name], w, rtol=1e-4, atol=1e-6, err_msg=name)


def test_on_two_2cpu_nodes_a_folds_workers_share_a_node_and_compute_what_one_worker_does(tiny_demo, tmp_path):
    """On a ray.cluster_utils.Cluster of two 2-CPU nodes: 3 workers a fold (more than a node's CPUs) are refused
    before the pre-flight (no run directory); a fold of 2 gloo workers on Ray Train runs on one node (STRICT_PACK),
    computes the epochs one worker computes here, reports its epochs once (rank 0) and saves its state."""
    from ray_processes import HERE, Driver, HelperCluster, child_env

    from raydf.training.fold_loop import train_fold

    out = tmp_path / "seen.json"
    cluster = HelperCluster()
    try:
        address = cluster.start_head(num_cpus=2)
        cluster.add_node(num_cpus=2)
        args = [str(HERE / "ddp_fold_driver.py"), address, str(out), str(tiny_demo.train), str(tmp_path)]
        driver = Driver(args, child_env(cluster.tmpdir))
        images, labels = separable_images(36, 36)  # meanwhile, one worker in this process
        torch.set_num_threads(1)
        one = train_fold(images, labels, TRAIN_IDX, VAL_IDX, _cfg(), fold=0)
        try:
            code = driver.finish(timeout_s=300)
        finally:
            driver.kill()
        assert code == 0, driver.output[-4000:]
    finally:
        cluster.shutdown()
    seen = json.loads(out.read_text())

    assert "resources.workers_per_fold=3" in seen["refused"], seen["refused"]
    assert "the largest node of the Ray cluster has 2 CPU(s)" in seen["refused"]
    assert not seen["refused_run_dir_exists"]

    assert len(seen["nodes"]) == 2 and len(set(seen["worker_node_ids"])) == 1
    assert seen["workers"] == 2 and seen["placement"] == "STRICT_PACK"
    for a, b in zip(one.history, seen["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)
    np.testing.assert_allclose(seen["val_prob_fake"], one.val_prob_fake, rtol=1e-5, atol=1e-6)
    weights = torch.load(f"{out}.weights.pt", weights_only=True)
    for name, w in one.weights.items():
        np.testing.assert_allclose(weights[name].numpy(), w, rtol=1e-4, atol=1e-6, err_msg=name)
    assert seen["events"] == [["start", None], ["epoch", 1], ["epoch", 2], ["done", None]]  # rank 0 alone reports
    assert seen["state_saved"]


def test_a_folds_workers_are_packed_on_one_node_when_one_holds_them_and_refused_when_none_has_enough_gpus():
    from raydf.distributed.ddp_fold import plan_workers
    from raydf.errors import ConfigError

    nodes = [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 64.0, "GPU": 2.0}]
    plan = plan_workers(load_config(None, ["resources.gpus_per_fold=4", "resources.cpus_per_fold=4"]), nodes)
    assert (plan.workers, plan.gpus, plan.cpus, plan.strategy, plan.backend) == (4, 1, 4, "STRICT_PACK", "nccl")
    # 4 x 8 CPUs: no node holds them all; spread with PACK (and a warning) rather than never scheduled.
    assert plan_workers(
        load_config(None, ["resources.gpus_per_fold=4", "resources.cpus_per_fold=8"]), nodes
    ).strategy == ("PACK")
    with pytest.raises(ConfigError, match=r"resources.gpus_per_fold=8 .* largest node of the Ray cluster has 4 GPU"):
        plan_workers(load_config(None, ["resources.gpus_per_fold=8"]), nodes)
    assert plan_workers(load_config(None, ["resources.gpus_per_fold=1"]), nodes) is None  # a plain fold task
