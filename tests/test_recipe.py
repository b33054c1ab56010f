"""The fine-tuning recipe keys in the plain PyTorch fold loop (no Ray): optim.backbone_lr_scale,
train.freeze_backbone_epochs."""

import copy
import math

import numpy as np
import pytest
import torch

import raydf.training.fold_loop as fold_loop
from raydf.config import load_config
from raydf.errors import ConfigError
from raydf.models.factory import build_model
from raydf.training.fold_loop import make_optimizer, train_fold

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
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.sched.t_max)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert [g["lr"] for g in optimizer.param_groups] == [LR, pytest.approx(LR * 0.25)]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())  # both groups stepped
    schedule.step()
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


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim.backbone_lr_scale", 0, "must be positive"),
        ("train.freeze_backbone_epochs", -1, "must be >= 0"),
        ("train.freeze_backbone_epochs", 1.5, ""),  # an integer
    ],
)
def test_recipe_keys_are_validated_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=rf"'{key}'.*{message}"):
        _cfg(**{key: value})


def test_recipe_keys_can_be_tuned():
    space = {
        "optim.backbone_lr_scale": "{type: loguniform, low: 0.01, high: 1}",
        "train.freeze_backbone_epochs": "{type: choice, values: [0, 1]}",
    }
    cfg = _cfg(**{f"tune.space[{k}]": v for k, v in space.items()})
    assert set(space) <= set(cfg.tune.space)
    with pytest.raises(ConfigError, match=r"optim.backbone_lr_scale.*not a valid value.*must be positive"):
        _cfg(**{"tune.space[optim.backbone_lr_scale]": "{type: uniform, low: 0, high: 1}"})
