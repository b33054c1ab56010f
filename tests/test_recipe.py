"""The fine-tuning recipe keys in the plain PyTorch fold loop (no Ray): optim.backbone_lr_scale,
train.freeze_backbone_epochs, sched.warmup_epochs, train.ema."""

import copy
import functools
import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import raydf.training.fold_loop as fold_loop
from raydf.config import load_config
from raydf.errors import ConfigError
from raydf.models.factory import build_model
from raydf.training.fold_loop import make_optimizer, train_fold
from raydf.training.recipe import LrSchedule

LR = 0.01


def _data(n=40, size=40, seed=0):
    """Fakes carry a bright square in the centre; rows 0-7 validate, the other 32 train (4 steps of 8 an epoch)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    images[labels == 1, 12:28, 12:28] = 230
    return images, labels, np.arange(8, n), np.arange(8)


def _cfg(**over):
    base = {
        "data.resize": 40,
        "data.crop": 32,
        "model.name": "test_efficientnet",  # 0.1 M parameters
        "model.dropout": 0.0,
        "train.batch_size": 8,
        "train.eval_batch_size": 32,
        "train.augment": False,
        "train.epochs": 2,
        "train.patience": 10,
        "train.precision": "fp32",
        "optim.lr": LR,
        "sched.t_max": 3,  # a cosine that moves visibly from epoch to epoch
    }
    base.update(over)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


@pytest.fixture
def built(monkeypatch):
    """The network each train_fold builds, and its initial state."""
    models = []

    def build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        models.append((model, copy.deepcopy(model.state_dict())))
        return model

    monkeypatch.setattr(fold_loop, "build_model", build)
    return models


@pytest.fixture
def step_lrs():
    """The learning rate of every parameter group at every optimizer step, as the step sees it."""
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups])
    )
    yield seen
    handle.remove()


def _head_names(model):
    owner = next(prefix for prefix, m in model.named_modules() if m is model.get_classifier())
    return {f"{owner}.{k}" for k, _ in model.get_classifier().named_parameters()}


@pytest.mark.parametrize("name", ["test_efficientnet", "inception_resnet_v1"])
def test_backbone_lr_scale_gives_the_head_optim_lr_and_the_backbone_a_fraction(name):
    size = {"data.resize": 80, "data.crop": 80} if name == "inception_resnet_v1" else {}
    cfg = _cfg(**{"model.name": name, "optim.backbone_lr_scale": 0.1, **size})
    with torch.device("meta"):  # InceptionResnetV1's 27 M parameters, without their memory
        model = build_model(0.0, name)
    optimizer = make_optimizer(model, cfg)
    head, backbone = optimizer.param_groups
    # The head group is the final classifier layer, exactly; the backbone group everything else, once.
    expected_head = [model.logits.weight, model.logits.bias] if name == "inception_resnet_v1" else None
    if expected_head is None:
        expected_head = [p for n, p in model.named_parameters() if n in _head_names(model)]
        assert [id(p) for p in expected_head] == [id(p) for p in model.get_classifier().parameters()]
    assert [id(p) for p in head["params"]] == [id(p) for p in expected_head]
    in_head = {id(p) for p in expected_head}
    assert [id(p) for p in backbone["params"]] == [id(p) for p in model.parameters() if id(p) not in in_head]
    assert (head["lr"], backbone["lr"]) == (LR, pytest.approx(LR * 0.1))


def test_backbone_lr_scale_holds_through_steps_and_the_cosine_scales_both_groups():
    torch.manual_seed(0)
    model = build_model(0.0, "test_efficientnet")
    cfg = _cfg(**{"optim.backbone_lr_scale": 0.25})
    optimizer = make_optimizer(model, cfg)
    schedule = LrSchedule(optimizer, cfg.sched, steps_per_epoch=1)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert [g["lr"] for g in optimizer.param_groups] == [LR, pytest.approx(LR * 0.25)]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())  # both groups stepped
    schedule.after_epoch()
    cosine = (1 + math.cos(math.pi / cfg.sched.t_max)) / 2
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(LR * cosine), pytest.approx(LR * 0.25 * cosine)]


def test_scale_one_keeps_the_single_group_of_before():
    model = build_model(0.0, "test_efficientnet")
    groups = make_optimizer(model, _cfg()).param_groups
    assert len(groups) == 1 and [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_a_frozen_backbone_is_unchanged_while_the_head_trains_then_it_trains_too(built):
    images, labels, tr, va = _data()
    snapshots = []
    cfg = _cfg(**{"train.freeze_backbone_epochs": 1})
    out = train_fold(
        images, labels, tr, va, cfg, 0, on_epoch=lambda row: snapshots.append(copy.deepcopy(built[0][0].state_dict()))
    )
    model, initial = built[0]
    head = _head_names(model)
    params = [n for n, _ in model.named_parameters()]
    backbone = [n for n in params if n not in head]
    epoch1, epoch2 = snapshots
    for n in backbone:
        torch.testing.assert_close(epoch1[n], initial[n], rtol=0, atol=0, msg=f"{n} moved in a frozen epoch")
    assert all(not torch.equal(epoch1[n], initial[n]) for n in head)
    assert all(not torch.equal(epoch2[n], epoch1[n]) for n in params)  # epoch 2: everything trains
    # BatchNorm layers stay in training mode while frozen: their running statistics follow the new data.
    assert not torch.equal(epoch1["bn1.running_mean"], initial["bn1.running_mean"])
    assert [(h["lr"], h["lr_backbone"]) for h in out.history] == [(LR, 0.0), (pytest.approx(LR * 0.75),) * 2]


def _cosine_step_lrs(cfg, steps_per_epoch):
    """What the seed's schedule (CosineAnnealingLR stepped per epoch) gives every optimizer step."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.sched.t_max)
    lrs = []
    for _ in range(cfg.train.epochs):
        lrs += [optimizer.param_groups[0]["lr"]] * steps_per_epoch
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_rises_linearly_per_step_then_follows_the_cosine_and_zero_is_the_seeds_schedule(step_lrs):
    images, labels, tr, va = _data()  # 32 training rows, batch 8: 4 steps an epoch
    common = {"train.epochs": 3, "optim.backbone_lr_scale": 0.5}
    train_fold(images, labels, tr, va, _cfg(**common), 0)
    plain = [lrs[0] for lrs in step_lrs]
    assert plain == _cosine_step_lrs(_cfg(**common), 4)  # exactly: no warm-up is the schedule of before
    step_lrs.clear()

    train_fold(images, labels, tr, va, _cfg(**common, **{"sched.warmup_epochs": 1.5}), 0)
    head = [lrs[0] for lrs in step_lrs]
    assert [lrs[1] for lrs in step_lrs] == [pytest.approx(lr * 0.5, rel=1e-12) for lr in head]  # both groups
    warm = 6  # 1.5 epochs x 4 steps
    # Epoch 1 (cosine factor 1): lr / 6, 2 lr / 6, ... rising by the same amount each step.
    assert head[:4] == pytest.approx([LR * (s + 1) / warm for s in range(4)], rel=1e-12)
    # Epoch 2's first two steps: the ramp times epoch 2's cosine value; then the cosine alone.
    assert head[4:6] == pytest.approx([plain[4] * (s + 1) / warm for s in (4, 5)], rel=1e-12)
    assert head[warm:] == pytest.approx(plain[warm:], rel=1e-12)
    assert len(head) == 12


def test_validated_and_saved_weights_are_the_moving_average(built):
    """train.ema=0.5 without warm-up: the average after step k is 0.5 x the one before + 0.5 x the weights after step
    k (the first step copies them). Computed here from the weights after every step, it is what the fold validates
    (its out-of-fold probabilities) and hands back."""
    images, labels, tr, va = _data()
    after_step = []
    handle = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: after_step.append(copy.deepcopy(built[0][0].state_dict()))
    )
    cfg = _cfg(**{"train.epochs": 1, "train.ema": 0.5, "train.ema_warmup": False})
    try:
        out = train_fold(images, labels, tr, va, cfg, 0)
    finally:
        handle.remove()
    assert len(after_step) == 4
    expected = dict(after_step[0])
    for state in after_step[1:]:
        expected = {k: 0.5 * v + 0.5 * state[k] if v.is_floating_point() else state[k] for k, v in expected.items()}
    last = after_step[-1]
    for k, v in expected.items():
        np.testing.assert_allclose(out.weights[k], v.numpy(), rtol=1e-6, atol=1e-7, err_msg=k)
    assert any(not np.allclose(out.weights[k], last[k].numpy()) for k in last)  # not the trained model's weights

    model = build_model(0.0, "test_efficientnet").eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in out.weights.items()})
    from raydf.data.dataset import ImageArrayDataset, make_loader
    from raydf.data.transforms import eval_transform
    from raydf.training.engine import evaluate

    loader = make_loader(ImageArrayDataset(images, va, labels, eval_transform(32)), 32, train=False)
    metrics, probs = evaluate(model, loader, torch.device("cpu"))
    np.testing.assert_allclose(out.val_prob_fake, probs[:, 1], rtol=1e-5, atol=1e-6)
    assert out.history[0]["val_loss"] == pytest.approx(metrics["loss"], rel=1e-5)


RECIPE = {
    "optim.backbone_lr_scale": 0.1,
    "train.freeze_backbone_epochs": 1,
    "sched.warmup_epochs": 1.5,
    "train.ema": 0.9,
}


def test_the_recipe_compiled_computes_what_it_does_uncompiled(monkeypatch):
    """train.compile with all four keys: the training module recompiles when the backbone thaws (requires_grad
    changes) and the average is compiled for validation; the numbers are the plain fold's."""
    images, labels, tr, va = _data()
    plain = train_fold(images, labels, tr, va, _cfg(**RECIPE), 0)
    # Dynamo's eager backend, as tests/test_fold_loop.py's compile test: the wiring, without inductor's code generation.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    compiled = train_fold(images, labels, tr, va, _cfg(**RECIPE, **{"train.compile": True}), 0)
    assert [h["val_loss"] for h in compiled.history] == [h["val_loss"] for h in plain.history]
    for k, v in plain.weights.items():
        np.testing.assert_array_equal(compiled.weights[k], v)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim.backbone_lr_scale", 0, "must be positive"),
        ("train.freeze_backbone_epochs", -1, "must be >= 0"),
        ("sched.warmup_epochs", 9, r"must be in \[0, train.epochs=2\]"),
        ("train.ema", 1.0, r"must be in \[0, 1\)"),
        ("train.freeze_backbone_epochs", 1.5, ""),  # an integer
    ],
)
def test_recipe_keys_are_validated_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=rf"'{key}'.*{message}"):
        _cfg(**{key: value})


def test_recipe_keys_can_be_tuned():
    space = {
        "sched.warmup_epochs": "{type: uniform, low: 0, high: 1}",
        "optim.backbone_lr_scale": "{type: loguniform, low: 0.01, high: 1}",
        "train.freeze_backbone_epochs": "{type: choice, values: [0, 1]}",
        "train.ema": "{type: choice, values: [0, 0.99]}",
    }
    cfg = _cfg(**{f"tune.space[{k}]": v for k, v in space.items()})
    assert set(space) <= set(cfg.tune.space)
    with pytest.raises(ConfigError, match=r"sched.warmup_epochs.*not a valid value.*train.epochs=2"):
        _cfg(**{"tune.space[sched.warmup_epochs]": "{type: uniform, low: 0, high: 5}"})
