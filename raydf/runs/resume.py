"""Resuming a run: its saved config, and refusing changes that would alter its results."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import yaml

from raydf.config import Config, load_config
from raydf.errors import ConfigError
from raydf.runs.storage import RunStorage

# Keys a resumed run may change: where and how fast it runs, not what it computes.
RESUME_SAFE_PREFIXES = (
    "resources.",
    "ray.",
    "predict.batch_size",
    "predict.actors",
    "predict.explain",
    "predict.calibration",  # fitted after the folds, from their out-of-fold files (raydf.calibrate refits them)
    "predict.threshold",
    "serve.",
    "data.decode_threads",
    "run_dir",
    "resume",
)


# Keys added after runs were made, with the value that reproduces a run whose config.yaml predates them.
ADDED_LATER = {
    "synth.mask": "ellipse",  # self-blended fakes' masks followed no landmarks before
    "synth.other": "0",  # nor did a fake take another face
}


def _predated(saved_yaml: str) -> list[str]:
    """Overrides `key=value` for the `ADDED_LATER` keys a saved config.yaml does not hold."""
    saved = yaml.safe_load(saved_yaml) or {}
    out = []
    for key, value in ADDED_LATER.items():
        node = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            out.append(f"{key}={value}")
    return out


def _flat(cfg: Config) -> dict[str, object]:
    out = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(dataclasses.asdict(cfg), "")
    return out


def config_changes(old: Config, new: Config) -> dict[str, tuple[object, object]]:
    """{key: (old, new)} for every result-changing key that differs."""
    a, b = _flat(old), _flat(new)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k] and not any(k.startswith(p) for p in RESUME_SAFE_PREFIXES)}


def resume_config(run_dir: str, config: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """The config of the run at `run_dir`, with `overrides` that do not change its results."""
    storage = RunStorage(run_dir)
    if not storage.exists("config.yaml") or not storage.exists("folds.csv"):
        raise ConfigError(
            f"resume={run_dir}: not a raydf run directory (it needs config.yaml and folds.csv); check the path"
        )
    with tempfile.TemporaryDirectory() as tmp:
        saved_file = Path(tmp) / "config.yaml"
        text = storage.read_text("config.yaml")
        saved_file.write_text(text)
        predated = _predated(text)
        saved = load_config(saved_file, predated)
        new = load_config(config or saved_file, [*predated, *overrides])
    changes = config_changes(saved, new)
    if changes:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changes.items())
        raise ConfigError(
            f"resume={run_dir} would change the run's results: {listed}. Resume with the run's own "
            f"settings (drop those overrides) or start a new run with another run_dir"
        )
    new.run_dir = new.resume = run_dir
    return new
