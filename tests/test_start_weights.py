"""Pretrained starts: `model.weights=FILE`, `model.pretrained=...` (no network here: downloads must fail cleanly)."""

import os
import subprocess
import sys
import urllib.error

import pytest
import timm
import torch
from conftest import REPO, tiny_overrides

from raydf.config import load_config
from raydf.errors import ConfigError
from raydf.models.factory import build_model
from raydf.models.weights import download_pretrained, fit_to_model
from raydf.runs.storage import RunStorage
from raydf.training.checkpoint import save_fold_checkpoint
from raydf.training.start_weights import read_weights_file, start_weights_by_backbone, start_weights_for


def _imagenet_file(path, name="test_efficientnet", wrap=True):
    """A timm network with ImageNet's 1000-class head, saved as a timm training script saves it under DDP."""
    torch.manual_seed(0)
    state = timm.create_model(name, pretrained=False).state_dict()
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in state.items()}} if wrap else state, path)
    return state


def test_a_run_starts_every_fold_from_the_weights_file(ray_local, tiny_demo, tmp_path):
    """Trained with a learning rate of ~0, each fold's checkpoint keeps the file's weights: every fold started
    from them (through the object store), the 1000-class head replaced by a 2-class one."""
    from raydf.pipelines.training import train

    file = tmp_path / "imagenet.pth"
    start = _imagenet_file(file)
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_overrides(run_dir, tiny_demo) if not o.startswith("data.test=")]
    cfg = load_config(None, [*overrides, f"model.weights={file}", "optim.lr=1e-12", "optim.weight_decay=0"])
    train(cfg)
    for fold in (0, 1):
        ckpt = torch.load(run_dir / "checkpoints" / f"fold{fold}.pt", weights_only=True)
        assert ckpt["meta"]["start_weights"] == str(file)
        weights = ckpt["state_dict"]
        assert weights["classifier.weight"].shape == (2, start["classifier.weight"].shape[1])
        body = [k for k in start if not k.startswith("classifier.") and "running_" not in k and "num_batches" not in k]
        assert len(body) > 40  # every convolution, BatchNorm scale and shift
        for key in body:  # BatchNorm's running statistics move with the data; the weights must not
            torch.testing.assert_close(weights[key], start[key], rtol=0, atol=1e-6, msg=key)
    # A random start (what a run without model.weights does) is far from the file: the check above can fail.
    scratch = build_model(0.0, "test_efficientnet").state_dict()
    assert not torch.allclose(scratch["conv_stem.weight"], start["conv_stem.weight"], atol=1e-3)


def test_facenet_vggface2_weights_fit_inception_resnet_v1_with_a_new_head(tmp_path):
    """facenet's vggface2 file holds an 8631-identity classifier: everything else loads, the head is replaced."""
    from facenet_pytorch import InceptionResnetV1

    file = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(InceptionResnetV1(classify=True, num_classes=8631).state_dict(), file)
    with torch.device("meta"):
        model = build_model(0.6, "inception_resnet_v1")
    start = fit_to_model(read_weights_file(str(file)), model, "inception_resnet_v1", str(file))
    assert sorted(start.head_replaced) == ["logits.bias", "logits.weight"]
    assert not start.missing and not start.unexpected
    assert len(start.loaded) == len(model.state_dict()) - 2
    assert "classifier head replaced" in start.summary()


def test_a_raydf_checkpoint_is_a_start_for_the_same_backbone(tmp_path):
    """A finished run's fold checkpoint fine-tunes a new run: all of it fits, head included."""
    net = build_model(0.2, "test_efficientnet")
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    save_fold_checkpoint(RunStorage(tmp_path), 0, weights, {"model": "test_efficientnet"})
    cfg = load_config(None, ["model.name=test_efficientnet", f"model.weights={tmp_path}/checkpoints/fold0.pt"])
    start = start_weights_for(cfg)
    assert not start.head_replaced and not start.missing and not start.unexpected
    for key, value in net.state_dict().items():
        assert torch.equal(start.state_dict[key], value)


def test_a_file_for_another_network_is_refused_naming_the_file_and_the_key(tmp_path):
    file = tmp_path / "resnet18.pth"
    _imagenet_file(file, "resnet18", wrap=False)
    cfg = load_config(None, ["model.name=test_efficientnet", f"model.weights={file}"])
    with pytest.raises(ConfigError, match=rf"{file} does not fit test_efficientnet: .*'[\w.]+'"):
        start_weights_for(cfg)

    # A close relative (same layer names, other widths and depths) is refused too, naming the first bad key.
    file = tmp_path / "b0.pth"
    _imagenet_file(file, "efficientnet_b0", wrap=False)
    cfg = load_config(None, ["model.name=efficientnet_b2", f"model.weights={file}"])
    with pytest.raises(ConfigError, match=rf"{file} does not fit efficientnet_b2: .*'[\w.]+'"):
        start_weights_for(cfg)

    not_weights = tmp_path / "numbers.pt"
    torch.save({"lr": 0.1, "epoch": 3}, not_weights)
    cfg = load_config(None, ["model.name=test_efficientnet", f"model.weights={not_weights}"])
    with pytest.raises(ConfigError, match="not a state dict"):
        start_weights_for(cfg)


def test_pretrained_without_network_stops_before_training_naming_the_download(tiny_demo, tmp_path):
    """`model.pretrained=true` on a machine that cannot reach the hub: exit 2 before the pre-flight, no run
    directory, and the message says what to download and which model.weights= to pass instead."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), RAY_AUTH_MODE="disabled")
    proc = subprocess.run(
        [sys.executable, "-m", "raydf.train", *tiny_overrides(run_dir, tiny_demo), "model.pretrained=true"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "timm/test_efficientnet" in proc.stderr and "model.weights=" in proc.stderr
    assert not run_dir.exists()


def test_facenet_pretrained_without_network_names_the_release_file(monkeypatch, tmp_path):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    cfg = load_config(None, ["model.pretrained=casia-webface"])
    with pytest.raises(ConfigError) as err:
        download_pretrained(cfg.model)
    message = str(err.value)
    assert "20180408-102900-casia-webface.pt" in message and "model.weights=" in message
    assert "URLError" in message


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model.weights=a.pt", "model.pretrained=vggface2"], "both set"),
        (["model.name=resnet18", "model.pretrained=vggface2"], "must be one of imagenet, true"),
        (["model.pretrained=imagenet"], "vggface2, casia-webface, true"),
    ],
)
def test_start_settings_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_pretrained_false_and_true_read_as_yaml_booleans():
    assert load_config(None, ["model.pretrained=false"]).model.pretrained is None
    assert load_config(None, ["model.name=resnet18", "model.pretrained=true"]).model.pretrained == "true"


def test_a_sweep_over_backbones_checks_the_weights_file_against_each_before_any_work(tmp_path):
    file = tmp_path / "imagenet.pth"
    _imagenet_file(file)
    space = "tune.space[model.name]={type: choice, values: [test_efficientnet, resnet18]}"
    cfg = load_config("tune", ["model.name=test_efficientnet", f"model.weights={file}", space])
    with pytest.raises(ConfigError, match=f"{file} does not fit resnet18"):
        start_weights_by_backbone(cfg)
    cfg = load_config("tune", ["model.name=test_efficientnet", f"model.weights={file}", "tune.space={}"])
    assert list(start_weights_by_backbone(cfg)) == ["test_efficientnet"]
