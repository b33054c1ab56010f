"""Every backbone family raydf offers trains a fold and predicts through the same fold loop (no Ray)."""

import numpy as np
import pytest
import torch

from raydf.config import load_config
from raydf.data.dataset import ImageArrayDataset, make_loader
from raydf.data.transforms import eval_transform
from raydf.models.factory import build_model
from raydf.models.weights import apply_start_weights
from raydf.training.engine import Precision, evaluate
from raydf.training.fold_loop import train_fold
from raydf.training.start_weights import start_weights_for

# One of each family, at its smallest: the seed's network, EfficientNet, Xception, ResNet, ConvNeXt.
FAMILIES = ["inception_resnet_v1", "efficientnet_b0", "legacy_xception", "resnet18", "convnext_atto"]


def _images(n=24, size=80, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    return images, np.arange(n) % 2


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_trains_a_fold_and_its_weights_predict_what_the_fold_reported(name):
    torch.set_num_threads(2)
    images, labels = _images()
    cfg = load_config(
        None,
        [
            f"model.name={name}",
            "data.resize=80",
            "data.crop=76",
            "train.epochs=1",
            "train.batch_size=8",
            "train.eval_batch_size=8",
            "train.augment=false",
            "train.precision=fp32",
        ],
    )
    val_idx, train_idx = np.arange(8), np.arange(8, 24)
    out = train_fold(images, labels, train_idx, val_idx, cfg, fold=0)
    assert out.epochs_run == 1 and np.isfinite(out.val_loss)
    # The returned weights rebuild the network (as raydf.predict does) and give the fold's own OOF P(fake).
    model = build_model(cfg.model.dropout, name)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in out.weights.items()})
    loader = make_loader(ImageArrayDataset(images, val_idx, labels, eval_transform(76)), 8, train=False)
    _, probs = evaluate(model, loader, torch.device("cpu"), Precision.resolve("fp32", torch.device("cpu")))
    np.testing.assert_allclose(probs[:, 1], out.val_prob_fake, rtol=0, atol=1e-5)


def test_weights_saved_from_a_model_give_identical_logits(tmp_path):
    torch.manual_seed(1)
    source = build_model(0.2, "resnet18").eval()
    file = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), file)
    cfg = load_config(None, ["model.name=resnet18", f"model.weights={file}"])
    start = start_weights_for(cfg)
    torch.manual_seed(2)  # another random init, which the file must overwrite entirely
    target = build_model(0.2, "resnet18").eval()
    apply_start_weights(target, start.state_dict)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))
