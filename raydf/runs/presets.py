"""The hint `raydf.train` gives on a labelled data set of the user's: the preset that measured best on real
manipulations (`configs/pretrained.yaml`, benchmarks/README.md), and the keys in which the run differs from it.

A hint, never a change: the run trains the config it was given. The preset's keys are read from its file when the
run starts; without the file (or with one this version cannot load) there is no hint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from raydf.config import CONFIG_DIR, Config, load_config, valid_keys, value_of
from raydf.errors import ConfigError

log = logging.getLogger(__name__)

BEST_PRESET = "pretrained"  # --config pretrained: configs/pretrained.yaml
MAX_KEYS = 8  # differing keys named in the hint; the rest counted


def preset_keys(path: str | Path) -> list[str]:
    """The dotted keys a preset file sets (`model.name`, ...), in its order."""
    data = OmegaConf.load(path)
    if not isinstance(data, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    known = set(valid_keys())

    def flat(node: Any, prefix: str) -> list[str]:
        keys = []
        for k, v in node.items():
            key = f"{prefix}{k}"
            keys += flat(v, f"{key}.") if isinstance(v, dict) and key not in known else [key]
        return keys

    return flat(OmegaConf.to_container(data), "")


def preset_differences(cfg: Config, preset: Config, keys: list[str]) -> list[str]:
    """Of `keys` (those a preset file sets: `preset_keys`), the ones whose value in `cfg` is not the `preset`'s.
    Both configs as `load_config` gives them (interpolations resolved, `off`/`on` normalised), so a preset's
    `sched.t_max: ${train.epochs}` differs only when the run's t_max is not the preset's epochs."""
    return [key for key in keys if value_of(cfg, key) != value_of(preset, key)]


def preset_hint(cfg: Config, path: Optional[str | Path] = None) -> Optional[str]:
    """The hint line for a run on the user's labelled data (data.train set, not a resumed run) whose config differs
    from the best preset; None otherwise, or when the preset's file is absent or cannot be loaded."""
    path = Path(path) if path is not None else CONFIG_DIR / f"{BEST_PRESET}.yaml"
    if cfg.data.train is None or cfg.resume or not path.is_file():
        return None
    try:
        # Validated as any config (a timm model.name imports timm: about 2 s, once per run).
        preset = load_config(path)
        differs = preset_differences(cfg, preset, preset_keys(path))
    except ConfigError as e:  # a preset written for another version of the schema: no hint
        log.debug("no preset hint: %s", e)
        return None
    if not differs:
        return None
    keys = ", ".join(differs[:MAX_KEYS]) + (f" and {len(differs) - MAX_KEYS} more" if len(differs) > MAX_KEYS else "")
    name = path.stem if path.parent.resolve() == CONFIG_DIR.resolve() else str(path)
    return (
        f"hint: the preset measured best on real face swaps is --config {name} ({_describe(preset)}); "
        f"this run differs in {keys} (benchmarks/README.md)"
    )


def log_preset_hint(cfg: Config, path: Optional[str | Path] = None) -> None:
    line = preset_hint(cfg, path)
    if line:
        log.info("%s", line)


def _describe(preset: Config) -> str:
    """The preset's network in a few words: `imagenet-pretrained efficientnet_lite0, fine-tuned`."""
    m = preset.model
    if m.pretrained:
        source = "pretrained" if m.pretrained == "true" else f"{m.pretrained}-pretrained"
        return f"{source} {m.name}, fine-tuned"
    if m.weights:
        return f"{m.name} from {m.weights}, fine-tuned"
    return m.name
