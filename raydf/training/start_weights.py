"""The weights every fold starts from: `model.weights` (a file) or `model.pretrained` (the library's download).

The driver reads or downloads them once, checks them against the network and keeps what fits; every fold then
starts from that state dict (on a cluster it travels through the object store, not once per fold).
"""

from __future__ import annotations

import io
import logging
from typing import Optional

import numpy as np
import torch

from raydf.config import DEFAULT_MODEL, Config, ModelConfig, with_values
from raydf.errors import ConfigError
from raydf.models.factory import build_model
from raydf.models.weights import StartWeights, download_pretrained, error_line, fit_to_model, unwrap_state_dict
from raydf.runs.storage import RunStorage

log = logging.getLogger(__name__)


def read_weights_file(location: str) -> dict[str, torch.Tensor]:
    """Load `location` (a path or URI) with `weights_only=True`: tensors and plain data, never arbitrary code."""
    storage, name = RunStorage.for_file(location)
    if not storage.exists(name):
        raise ConfigError(f"config key 'model.weights': file {location} does not exist")
    try:
        obj = torch.load(io.BytesIO(storage.read_bytes(name)), map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or pickled objects weights_only refuses
        raise ConfigError(
            f"config key 'model.weights': cannot load {location} as PyTorch weights ({error_line(e)}); "
            "it must be a file torch.save wrote holding tensors (a state dict or a raydf checkpoint)"
        ) from None
    return unwrap_state_dict(obj, location)


def resolve_start_weights(model_cfg: ModelConfig, model: torch.nn.Module) -> Optional[StartWeights]:
    """The weights every fold starts from (checked against `model`), or None to start from scratch."""
    if model_cfg.weights:
        state, source = read_weights_file(model_cfg.weights), str(model_cfg.weights)
    elif model_cfg.pretrained:
        state, source = download_pretrained(model_cfg)
        state = unwrap_state_dict(state, source)
    else:
        return None
    start = fit_to_model(state, model, model_cfg.name, source)
    log.info("start weights: %s", start.summary())
    return start


def _native_size_note(cfg: Config) -> None:
    """Log when a pretrained start sees other input sizes than it was trained on (allowed, often a little worse)."""
    if cfg.model.name == DEFAULT_MODEL:
        native = 160  # facenet's vggface2 / casia-webface models: 160 px MTCNN crops
    else:
        import timm

        pcfg = timm.models.get_pretrained_cfg(cfg.model.name)
        native = pcfg.input_size[-1] if pcfg is not None else None
    if native and native != cfg.data.crop:
        log.info(
            "%s's pretrained weights were trained on %d px inputs, this run feeds %d px crops (data.crop): a "
            "convolutional network accepts them, and fine-tuning adapts, but a crop near %d px often starts better",
            cfg.model.name,
            native,
            cfg.data.crop,
            native,
        )


def start_weights_for(cfg: Config) -> Optional[StartWeights]:
    """`resolve_start_weights` against the configured network, built on the meta device (shapes, no memory)."""
    if not (cfg.model.weights or cfg.model.pretrained):
        return None
    with torch.device("meta"):
        model = build_model(cfg.model.dropout, cfg.model.name)
    start = resolve_start_weights(cfg.model, model)
    if cfg.model.pretrained:  # a file's training size is unknown
        _native_size_note(cfg)
    return start


def start_weights_by_backbone(cfg: Config) -> dict[str, dict[str, np.ndarray]]:
    """{backbone: fitted start weights as numpy} for every `model.name` a sweep tries (empty: from scratch)."""
    if not (cfg.model.weights or cfg.model.pretrained):
        return {}
    spec = cfg.tune.space.get("model.name")
    names = list(spec["values"]) if spec else [cfg.model.name]
    starts = {name: start_weights_for(with_values(cfg, {"model.name": name}, source="tune.space")) for name in names}
    return {name: start.as_numpy() for name, start in starts.items() if start}
