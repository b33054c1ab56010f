"""The plain PyTorch fold loop on tiny inputs (no Ray)."""

import os
import sys

import numpy as np
import pytest
import torch

from raydf.config import load_config
from raydf.data.dataset import ImageArrayDataset, make_loader
from raydf.data.transforms import eval_transform
from raydf.models.factory import build_model
from raydf.training import heap
from raydf.training.engine import Precision, evaluate
from raydf.training.fold_loop import make_optimizer, train_fold
from raydf.training.metrics import classification_metrics, soft_vote


def _separable(n=48, size=80, seed=0):
    """Fakes carry a bright square in the centre; reals do not."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    c = size // 2
    images[labels == 1, c - 12 : c + 12, c - 12 : c + 12] = 230
    return images, labels


def _cfg(**over):
    base = {
        "data.resize": 80,
        "data.crop": 76,
        "train.batch_size": 16,
        "train.eval_batch_size": 32,
        "train.augment": False,
        "train.epochs": 4,
        "train.patience": 10,
        "model.dropout": 0.0,
        "optim.lr": 0.01,
    }
    base.update(over)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def test_loss_goes_down_and_the_best_weights_are_the_best_epochs():
    torch.set_num_threads(2)
    images, labels = _separable()
    # The validation rows carry flipped labels: the better the model learns the training rows, the worse its
    # validation loss, so the lowest validation loss comes early and the last epoch is not the best one.
    val_labels = labels.copy()
    val_idx, train_idx = np.arange(0, 16), np.arange(16, 48)
    all_labels = labels.copy()
    all_labels[val_idx] = 1 - val_labels[val_idx]
    out = train_fold(images, all_labels, train_idx, val_idx, _cfg(), fold=0)

    losses = [h["train_loss"] for h in out.history]
    assert losses[-1] < losses[0]
    assert out.best_epoch < out.epochs_run
    val_losses = [h["val_loss"] for h in out.history]
    assert out.val_loss == min(val_losses) == val_losses[out.best_epoch - 1]

    # Loading the returned weights reproduces the best epoch's validation loss, not the last epoch's.
    model = build_model(0.0)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in out.weights.items()})
    model = model.to(memory_format=torch.channels_last)  # as the fold loop evaluates, in the fold's precision
    loader = make_loader(ImageArrayDataset(images, val_idx, all_labels, eval_transform(76)), 32, train=False)
    cpu = torch.device("cpu")
    metrics, probs = evaluate(model, loader, cpu, Precision.resolve(_cfg().train.precision, cpu))
    assert metrics["loss"] == pytest.approx(out.val_loss, rel=1e-4)
    assert metrics["loss"] != pytest.approx(val_losses[-1], rel=1e-3)
    np.testing.assert_allclose(out.val_prob_fake, probs[:, 1], rtol=1e-4, atol=1e-6)  # OOF = best weights


def test_early_stopping_after_patience():
    images, labels = _separable()
    val_idx, train_idx = np.arange(0, 16), np.arange(16, 48)
    flipped = labels.copy()
    flipped[val_idx] = 1 - flipped[val_idx]
    out = train_fold(images, flipped, train_idx, val_idx, _cfg(**{"train.epochs": 8, "train.patience": 2}), fold=0)
    assert out.epochs_run == out.best_epoch + 2 < 8


def test_radam_matches_the_seeds_torch_optimizer_radam():
    import torch_optimizer

    torch.manual_seed(0)
    a = torch.nn.Linear(8, 2)
    b = torch.nn.Linear(8, 2)
    b.load_state_dict(a.state_dict())
    cfg = _cfg(**{"optim.lr": 0.0015})
    opt_a = make_optimizer(a, cfg)
    opt_b = torch_optimizer.RAdam(b.parameters(), lr=0.0015, betas=(0.9, 0.999), weight_decay=1e-4)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    for _ in range(30):  # past RAdam's rectification warm-up (rho_t > 5 from step 6)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_soft_vote_is_the_mean_of_fold_softmaxes():
    probs = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.4, 0.6]]])  # (K=2, N=2, 2)
    np.testing.assert_allclose(soft_vote(probs), [[0.6, 0.4], [0.3, 0.7]])
    assert soft_vote(probs).argmax(1).tolist() == probs.sum(0).argmax(1).tolist()  # the seed summed: same argmax


def test_metrics_weighted_per_sample():
    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.8, 0.9]))
    assert m["accuracy"] == 0.75 and m["auc"] == 1.0 and m["ap"] == 1.0 and m["eer"] == 0.0
    assert classification_metrics(np.array([1, 1]), np.array([0.9, 0.8]))["auc"] is None


def test_equal_error_rate_where_false_positives_and_negatives_balance():
    # Scores of 4 reals and 4 fakes; at threshold 0.5 one real is above it and one fake below: FPR = FNR = 1/4.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.8, 0.85, 0.9])
    m = classification_metrics(labels, scores)
    assert m["eer"] == pytest.approx(0.25)
    assert m["ap"] == pytest.approx(np.mean([1, 1, 1, 0.8]))  # precision at each fake's rank: 1, 1, 1, 4/5
    rng = np.random.default_rng(0)
    chance = classification_metrics(rng.integers(0, 2, 4000), rng.random(4000))
    assert abs(chance["eer"] - 0.5) < 0.03 and abs(chance["auc"] - 0.5) < 0.03


@pytest.mark.parametrize("scores", ["distinct", "ties", "clipped ends"])
def test_bootstrap_resamples_score_as_classification_metrics_would(scores):
    """bootstrap_metrics scores each resample from its draw counts (`_Resampled`), not by calling
    classification_metrics on it: the two agree to rounding, ties and one-class resamples included."""
    from raydf.training.metrics import _Resampled, bootstrap_metrics

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    prob = {
        "distinct": np.clip(0.3 * labels + rng.normal(0.35, 0.25, 60), 0, 1),
        "ties": np.round(rng.random(60), 1),
        "clipped ends": rng.choice([0.0, 1e-9, 0.5, 1 - 1e-9, 1.0], 60),  # clipping to [1e-7, 1 - 1e-7] ties them
    }[scores]
    scorer = _Resampled(labels, prob)
    for idx in [rng.integers(0, 60, 60) for _ in range(30)] + [np.flatnonzero(labels == 1)[[0] * 60]]:
        expected, got = classification_metrics(labels[idx], prob[idx]), scorer.metrics(idx)
        for k, v in expected.items():
            assert got[k] == (None if v is None else pytest.approx(v, abs=1e-12)), k
    ci = bootstrap_metrics(labels, prob, n=50, seed=3)
    assert ci["auc"]["value"] == classification_metrics(labels, prob)["auc"]
    assert ci["auc"]["ci95"][0] <= ci["auc"]["value"] <= ci["auc"]["ci95"][1]


def test_flip_tta_averages_each_model_over_the_image_and_its_mirror():
    from raydf.training.engine import fold_prob_fake

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 6, 2)).eval() for _ in range(2)]
    x = torch.randn(5, 3, 4, 6)
    device = torch.device("cpu")

    def p(model, batch):
        return torch.softmax(model(batch), dim=1)[:, 1].detach().numpy()

    plain = fold_prob_fake(models, x, device)
    for got, model in zip(plain, models):
        np.testing.assert_array_equal(got, p(model, x))  # without TTA: exactly the one forward pass
    tta = fold_prob_fake(models, x, device, tta=True)
    for got, model in zip(tta, models):
        np.testing.assert_allclose(got, (p(model, x) + p(model, torch.flip(x, dims=[3]))) / 2, rtol=1e-6)
    assert not np.allclose(tta, plain)
    mirror = torch.cat([x[..., :3], torch.flip(x[..., :3], dims=[3])], dim=3)  # a left-right symmetric image
    np.testing.assert_allclose(
        fold_prob_fake(models, mirror, device, tta=True), fold_prob_fake(models, mirror, device), rtol=1e-6
    )


def test_precision_on_cpu_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    import raydf.training.engine as engine

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda native=native: native)
        assert Precision.resolve("auto", cpu).dtype == (torch.bfloat16 if native else None)
        assert Precision.resolve("fp32", cpu).dtype is None
        assert Precision.resolve("fp16", cpu).dtype is None  # fp16 autocast on a CPU is slower than fp32
        assert Precision.resolve("bf16", cpu).dtype == torch.bfloat16  # asked for: emulated if need be
    assert not Precision.resolve("auto", cpu).scaler(cpu).is_enabled()  # bf16 needs no gradient scaler


def _fake_gpu(monkeypatch, capability: tuple[int, int]) -> torch.device:
    """Make torch report one CUDA GPU of this compute capability (nothing runs on it: only the choice is tested)."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda device=None: SimpleNamespace(major=capability[0], minor=capability[1]),
    )
    # Every CUDA GPU can hold a bf16 tensor (emulated below 8.0): what torch's last-resort check finds on a T4.
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    # GradScaler switches itself off where CUDA is missing; on the faked GPU it must not.
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    return torch.device("cuda")


@pytest.mark.parametrize(
    "gpu, capability, auto",
    [
        ("T4", (7, 5), torch.float16),
        ("V100", (7, 0), torch.float16),
        ("A100", (8, 0), torch.bfloat16),
        ("H100", (9, 0), torch.bfloat16),
    ],
)
def test_precision_on_gpus_is_bf16_with_bf16_units_else_fp16_with_a_gradient_scaler(monkeypatch, gpu, capability, auto):
    cuda = _fake_gpu(monkeypatch, capability)
    chosen = Precision.resolve("auto", cuda)
    assert chosen.dtype == auto, gpu
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    assert chosen.scaler(cuda).is_enabled() == (auto == torch.float16)
    fp32 = Precision.resolve("fp32", cuda)
    assert fp32.dtype is None and not fp32.scaler(cuda).is_enabled()
    assert Precision.resolve("bf16", cuda).dtype == torch.bfloat16  # asked for: used even if emulated
    fp16 = Precision.resolve("fp16", cuda)
    assert fp16.dtype == torch.float16 and fp16.scaler(cuda).is_enabled()


def test_compiled_fold_computes_what_the_plain_one_does_and_returns_plain_weights(monkeypatch):
    """train.compile=true: the fold trains and validates through the compiled module, and the weights it hands back
    are the plain model's (no `_orig_mod.` prefix), so checkpoints load into an uncompiled model."""
    import functools

    torch.set_num_threads(2)
    images, labels = _separable(n=32)
    val_idx, train_idx = np.arange(0, 16), np.arange(16, 32)
    cfg = _cfg(**{"train.epochs": 1, "model.dropout": 0.5})
    plain = train_fold(images, labels, train_idx, val_idx, cfg, fold=0)
    # Dynamo's eager backend: the graph capture and raydf's wiring of the compiled module, without inductor's C++ code
    # generation (minutes on 2 cores from a cold cache) and its own dropout RNG, so the numbers stay comparable.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg.train.compile = True
    compiled = train_fold(images, labels, train_idx, val_idx, cfg, fold=0)
    assert set(compiled.weights) == set(build_model(0.5).state_dict())
    assert compiled.history[0]["val_loss"] == plain.history[0]["val_loss"]
    for k, v in plain.weights.items():
        np.testing.assert_array_equal(compiled.weights[k], v)
    np.testing.assert_array_equal(compiled.val_prob_fake, plain.val_prob_fake)


def test_a_stop_request_ends_the_fold_between_batches_keeping_the_last_epoch(tmp_path):
    """`should_stop` (how the Ray layer stops folds without ray.cancel) is asked before every batch; once it says
    yes the fold raises StopRequested, and its saved state is the last completed epoch's."""
    from raydf.runs.storage import RunStorage
    from raydf.training.engine import StopRequested
    from raydf.training.fold_state import FoldStateStore

    torch.set_num_threads(2)
    images, labels = _separable()
    asked = []

    def stop_at_4() -> bool:
        asked.append(1)
        return len(asked) > 3  # 32 training rows, batch 16: 2 batches per epoch, then 1 eval batch asked too

    store = FoldStateStore(RunStorage(tmp_path), 0)
    with pytest.raises(StopRequested):
        train_fold(images, labels, np.arange(16, 48), np.arange(16), _cfg(), 0, state=store, should_stop=stop_at_4)
    assert len(asked) == 4  # it stopped at the first batch it was told to, not at the end of the epoch
    assert store.load()["epoch"] == 1


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_os_and_the_loops_trim_it(monkeypatch):
    # 100 KB blocks sit in glibc's heap (below its 128 KB mmap threshold); freeing all but the last leaves ~40 MB
    # free that the heap cannot shrink past by itself (the live block pins its top).
    blocks = [np.ones(100_000, np.uint8) for _ in range(400)]
    del blocks[:-1]
    before = _rss_mb()
    assert heap.release_free_memory()
    assert before - _rss_mb() > 20  # MB given back

    # Both loops trim every EVERY_BATCHES batches.
    trims = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: trims.append(1) or True)
    images = np.zeros((2 * heap.EVERY_BATCHES, 40, 40, 3), np.uint8)
    loader = make_loader(
        ImageArrayDataset(images, np.arange(len(images)), np.zeros(len(images), int), eval_transform(32)),
        1,
        train=False,
    )
    evaluate(build_model(0.0, "test_efficientnet"), loader, torch.device("cpu"))
    assert len(trims) == 2
