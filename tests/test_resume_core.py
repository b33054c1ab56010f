"""Resumable fold state, storage and resume config, without Ray."""

import numpy as np
import pytest

from raydf.config import load_config
from raydf.errors import ConfigError
from raydf.runs.resume import resume_config
from raydf.runs.storage import RunStorage
from raydf.training.fold_loop import train_fold
from raydf.training.fold_state import FoldStateStore


class Crash(Exception):
    pass


def _data(n=40, size=80):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    images[labels == 1, 30:50, 30:50] = 230
    return images, labels, np.arange(12, n), np.arange(0, 12)


def _cfg(*overrides: str):
    return load_config(
        None,
        [
            "data.resize=80",
            "data.crop=76",
            "train.batch_size=14",
            "train.epochs=3",
            "train.patience=5",
            "optim.lr=0.01",
            "model.dropout=0.5",
            "model.name=test_efficientnet",  # resume is the fold loop's, whatever the network (0.1 M parameters)
            *overrides,
        ],
    )


def _crash_after(epoch):
    def on_epoch(row):
        if row["epoch"] == epoch:
            raise Crash

    return on_epoch


def _comparable(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    images, labels, tr, va = _data()
    store = FoldStateStore(RunStorage(tmp_path_factory.mktemp("ref")), 0)
    return train_fold(images, labels, tr, va, _cfg(), 0, state=store)


def test_resumed_fold_repeats_an_uninterrupted_one_exactly(tmp_path, uninterrupted):
    images, labels, tr, va = _data()
    store = FoldStateStore(RunStorage(tmp_path), 0)
    with pytest.raises(Crash):  # the worker "dies" after epoch 1's state was saved
        train_fold(images, labels, tr, va, _cfg(), 0, on_epoch=_crash_after(1), state=store)
    resumed = train_fold(images, labels, tr, va, _cfg(), 0, state=store)
    assert resumed.resumed_from_epoch == 1 and uninterrupted.resumed_from_epoch is None
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]  # every epoch once
    # Same order, augmentation and dropout per epoch: the resumed fold computes the same numbers.
    assert _comparable(resumed.history) == _comparable(uninterrupted.history)
    for k, v in uninterrupted.weights.items():
        np.testing.assert_array_equal(resumed.weights[k], v)


def test_loader_workers_change_nothing_and_still_resume_exactly(tmp_path, uninterrupted):
    """The GPU configs augment in DataLoader worker processes: a fold with 2 workers, crashed and resumed, computes
    what the uninterrupted in-process fold (0 workers) did."""
    images, labels, tr, va = _data()
    cfg = _cfg()
    cfg.resources.loader_workers = 2
    store = FoldStateStore(RunStorage(tmp_path), 0)
    with pytest.raises(Crash):
        train_fold(images, labels, tr, va, cfg, 0, on_epoch=_crash_after(1), state=store)
    resumed = train_fold(images, labels, tr, va, cfg, 0, state=store)  # new workers, seeded for epoch 2
    assert resumed.resumed_from_epoch == 1 and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert _comparable(resumed.history) == _comparable(uninterrupted.history)
    for k, v in uninterrupted.weights.items():
        np.testing.assert_array_equal(resumed.weights[k], v)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_fine_tuning_recipe_resumes_exactly(tmp_path, monkeypatch, precision):
    """A fold with the fine-tuning keys stopped after epoch 1 (backbone frozen, warm-up half done, the weight average
    validated and best) and resumed ends where an uninterrupted one does: the per-step schedule, the average and its
    step count, and the optimizer state of a backbone that had not been updated yet are all in the saved state. Under
    autocast too (fp16 with its gradient scaler, run on the CPU as the fp16 test below does)."""
    import torch

    from raydf.training.engine import Precision

    if precision == "fp16":
        monkeypatch.setattr(Precision, "resolve", classmethod(lambda cls, name, device: cls(torch.float16)))
    recipe = [
        "optim.backbone_lr_scale=0.1",
        "train.freeze_backbone_epochs=1",
        "sched.warmup_epochs=1.5",
        "train.ema=0.9",
        "train.epochs=2",
        "data.crop=32",  # the fold loop's logic, at a fifth of the compute
        f"train.precision={precision}",
    ]
    images, labels, tr, va = _data()
    reference = train_fold(images, labels, tr, va, _cfg(*recipe), 0)
    store = FoldStateStore(RunStorage(tmp_path), 0)
    with pytest.raises(Crash):
        train_fold(images, labels, tr, va, _cfg(*recipe), 0, on_epoch=_crash_after(1), state=store)
    resumed = train_fold(images, labels, tr, va, _cfg(*recipe), 0, state=store)
    assert resumed.resumed_from_epoch == 1 and [h["epoch"] for h in resumed.history] == [1, 2]
    assert _comparable(resumed.history) == _comparable(reference.history)
    for k, v in reference.weights.items():
        np.testing.assert_array_equal(resumed.weights[k], v)
    np.testing.assert_array_equal(resumed.val_prob_fake, reference.val_prob_fake)
    assert store.load()["ema"]["updates"] == 4  # 28 training rows, batch 14: two steps an epoch


@pytest.mark.slow
def test_fp16_loss_scale_is_saved_with_the_state_and_restored_on_resume(tmp_path, monkeypatch):
    """The fp16 path of older GPUs, run on the CPU (where autocast and GradScaler work too): the gradient scaler's
    state is part of a fold's saved state, and a fold resumed after epoch 1 ends where an uninterrupted one does."""
    import torch

    from raydf.training.engine import Precision

    monkeypatch.setattr(Precision, "resolve", classmethod(lambda cls, name, device: cls(torch.float16)))
    images, labels, tr, va = _data(n=30)  # one training step per epoch: fp16 autocast is slow on a CPU
    cfg = _cfg()
    cfg.train.epochs = 2
    reference = FoldStateStore(RunStorage(tmp_path / "ref"), 0)
    uninterrupted = train_fold(images, labels, tr, va, cfg, 0, state=reference)
    store = FoldStateStore(RunStorage(tmp_path / "run"), 0)
    with pytest.raises(Crash):
        train_fold(images, labels, tr, va, cfg, 0, on_epoch=_crash_after(1), state=store)
    scaler = store.load()["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler  # an enabled scaler's state, not a disabled one's {}
    resumed = train_fold(images, labels, tr, va, cfg, 0, state=store)
    assert resumed.resumed_from_epoch == 1
    assert store.load()["scaler"] == reference.load()["scaler"]  # same loss scale and count of steps since a change
    assert _comparable(resumed.history) == _comparable(uninterrupted.history)
    for k, v in uninterrupted.weights.items():
        np.testing.assert_array_equal(resumed.weights[k], v)


def test_truncated_state_falls_back_to_the_previous_epoch(tmp_path, uninterrupted):
    images, labels, tr, va = _data()
    storage = RunStorage(tmp_path)
    store = FoldStateStore(storage, 0)
    with pytest.raises(Crash):
        train_fold(images, labels, tr, va, _cfg(), 0, on_epoch=_crash_after(2), state=store)
    latest = storage.local_path(store.current)
    latest.write_bytes(latest.read_bytes()[:1000])  # a half-written file (say, a full disk)
    resumed = train_fold(images, labels, tr, va, _cfg(), 0, state=store)
    assert resumed.resumed_from_epoch == 1
    assert _comparable(resumed.history) == _comparable(uninterrupted.history)


def test_unreadable_states_mean_a_fresh_start(tmp_path):
    storage = RunStorage(tmp_path)
    storage.write_text("state/fold0.pt", "not a checkpoint")
    storage.write_bytes("state/fold0.prev.pt", b"")
    assert FoldStateStore(storage, 0).load() is None


def test_attempts_are_counted(tmp_path):
    store = FoldStateStore(RunStorage(tmp_path), 3)
    first = store.begin_attempt(pid=1)
    second = store.begin_attempt(pid=2)
    assert (first["attempts"], second["attempts"], second["pid"]) == (1, 2, 2)
    assert second["first_started_at"] == first["first_started_at"]


@pytest.mark.parametrize("uri", ["file://{tmp}/run", "mock:///run"])
def test_storage_on_uris(tmp_path, uri):
    storage = RunStorage(uri.format(tmp=tmp_path))
    storage.write_text("a/b.txt", "hello")
    storage.save_torch("c.pt", {"x": [1, 2]})
    assert storage.read_text("a/b.txt") == "hello" and storage.load_torch("c.pt") == {"x": [1, 2]}
    assert storage.listdir() == ["a", "c.pt"] and storage.exists("a/b.txt") and not storage.exists("nope")
    storage.move("a/b.txt", "a/d.txt")
    assert storage.listdir("a") == ["d.txt"]


def test_local_writes_leave_no_temp_files(tmp_path):
    storage = RunStorage(tmp_path)
    for i in range(3):
        storage.write_text("x.json", str(i))
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"] and storage.read_text("x.json") == "2"


def _saved_run(tmp_path, *overrides):
    from raydf.config import to_yaml

    storage = RunStorage(tmp_path)
    storage.write_text("config.yaml", to_yaml(load_config(None, list(overrides))))
    storage.write_text("folds.csv", "path,label,fold\n")
    return str(tmp_path)


def test_resume_refuses_result_changing_overrides(tmp_path):
    run = _saved_run(tmp_path, "train.epochs=5")
    with pytest.raises(ConfigError, match=r"train\.epochs \(5 -> 9\).*optim\.lr"):
        resume_config(run, None, ["train.epochs=9", "optim.lr=0.1"])


def test_resume_keeps_the_runs_config_and_allows_resource_changes(tmp_path):
    run = _saved_run(tmp_path, "train.epochs=5", "train.folds=3")
    cfg = resume_config(run, None, ["resources.cpus_per_fold=2", "ray.address=auto"])
    assert (cfg.train.epochs, cfg.train.folds, cfg.resources.cpus_per_fold) == (5, 3, 2)
    assert cfg.resume == cfg.run_dir == run


def test_resume_of_something_else_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a raydf run directory"):
        resume_config(str(tmp_path))


def test_a_new_attempt_removes_the_temp_files_a_killed_one_left(tmp_path):
    storage = RunStorage(tmp_path)
    storage.write_bytes("state/fold1.pt", b"complete")
    storage.write_bytes("state/fold1.pt.0a1b2c3d.tmp", b"half a state")  # its writer was killed (SIGKILL)
    storage.write_bytes("state/fold10.pt.0a1b2c3d.tmp", b"another fold's")
    FoldStateStore(storage, 1).begin_attempt(pid=1)
    assert storage.listdir("state") == ["fold1.attempt.json", "fold1.pt", "fold10.pt.0a1b2c3d.tmp"]
