"""Data-parallel folds: the plain PyTorch part in two gloo processes (no Ray), and one fold through Ray Train."""

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


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a data-parallel fold, started by torch.multiprocessing; records the rows it loaded."""
    import torch.distributed as dist

    from raydf.data.dataset import ImageArrayDataset
    from raydf.training.data_parallel import DataParallel
    from raydf.training.fold_loop import train_fold

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
        outcome = train_fold(images, labels, TRAIN_IDX, VAL_IDX, _cfg(), fold=0, data_parallel=dp)
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


def test_a_data_parallel_fold_on_ray_train_trains_resumes_and_reports_like_a_fold_task(ray_local, tmp_path):
    """Two gloo workers of one fold through Ray Train, on the 2-CPU session instance: the epochs one worker computes
    in this process, the progress events, the fold's state (an interrupted fold resumes from it), one node."""
    from raydf.distributed.folds import run_folds
    from raydf.runs.storage import RunStorage
    from raydf.training.fold_loop import train_fold

    ray = ray_local
    images, labels = separable_images(36, 36)
    torch.set_num_threads(1)
    one = train_fold(images, labels, TRAIN_IDX, VAL_IDX, _cfg(), fold=0)
    storage = RunStorage(tmp_path / "run")
    events = []
    refs = ray.put(images), ray.put(labels)
    splits = {0: (TRAIN_IDX, VAL_IDX)}
    resources = {"num_cpus": 1, "num_gpus": 0}
    workers = ["resources.workers_per_fold=2", "resources.cpus_per_fold=1"]
    # The first epoch, as if the run stopped there; then the fold resumes from its saved state to epoch 2.
    run_folds(*refs, splits, _cfg(*workers, "train.epochs=1"), resources, storage, on_events=events.extend)
    assert storage.exists("state/fold0.pt")
    ((weights_ref, info),) = run_folds(
        *refs, splits, _cfg(*workers), resources, storage, on_events=events.extend
    ).values()

    assert info["resumed_from_epoch"] == 1 and info["workers"] == 2 and info["placement"] == "STRICT_PACK"
    assert len(set(info["worker_node_ids"])) == 1
    for a, b in zip(one.history, info["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)
    np.testing.assert_allclose(info["val_prob_fake"], one.val_prob_fake, rtol=1e-5, atol=1e-6)
    weights = ray.get(weights_ref)
    for name, w in one.weights.items():
        np.testing.assert_allclose(weights[name], w, rtol=1e-4, atol=1e-6, err_msg=name)
    kinds = [(e["type"], e.get("epoch")) for e in events if e["fold"] == 0]
    assert kinds.count(("start", None)) == 2 and ("epoch", 1) in kinds and ("epoch", 2) in kinds
    assert kinds.count(("epoch", 1)) == 1  # rank 0 alone reports (and the resumed run does not repeat epoch 1)


def test_on_two_2cpu_nodes_each_folds_workers_share_a_node_and_3_workers_are_refused(tiny_demo, tmp_path):
    """`python -m raydf.train` against a ray.cluster_utils.Cluster of two 2-CPU nodes: the two workers of each
    fold on one node; 3 workers a fold, more than a node's CPUs, refused
    before the pre-flight (nothing trained, no run directory)."""
    from conftest import tiny_overrides
    from ray_processes import Driver, HelperCluster, child_env

    cluster = HelperCluster()
    try:
        address = cluster.start_head(num_cpus=2)
        cluster.add_node(num_cpus=2)
        env = child_env(cluster.tmpdir)
        base = ["-m", "raydf.train", f"ray.address={address}", "ray.scale_up_timeout_s=0"]
        refused = Driver(
            [
                *base,
                *tiny_overrides(tmp_path / "refused", tiny_demo),
                "resources.workers_per_fold=3",
                "train.batch_size=12",
            ],
            env,
        )
        try:
            assert refused.finish(timeout_s=120) != 0
        finally:
            refused.kill()
        assert "resources.workers_per_fold=3" in refused.output and "largest node of the Ray cluster has 2 CPU(s)" in (
            refused.output
        ), refused.output[-3000:]
        assert not (tmp_path / "refused").exists()

        run_dir = tmp_path / "run"
        overrides = tiny_overrides(run_dir, tiny_demo) + ["resources.workers_per_fold=2", "data.test="]
        driver = Driver([*base, *overrides], env)
        try:
            code = driver.finish(timeout_s=300)
        finally:
            driver.kill()
        assert code == 0, driver.output[-4000:]
    finally:
        cluster.shutdown()
    metas = [torch.load(run_dir / f"checkpoints/fold{k}.pt", weights_only=True)["meta"] for k in (0, 1)]
    placed = [set(m["worker_node_ids"]) for m in metas]
    assert [len(p) for p in placed] == [1, 1], placed
    assert all(m["workers"] == 2 and m["placement"] == "STRICT_PACK" for m in metas)
