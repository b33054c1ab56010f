"""Typed configuration: a schema of dataclasses, YAML files under `configs/`, `key=value` overrides.

The schema's defaults are the seed solution's recipe (the 2021 notebook); a YAML file states only what
it changes. Unknown keys and wrong types fail with a `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raydf.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "default"

# Smallest input InceptionResnetV1 accepts: below 75 px its last reduction block has a 2x2 map for a 3x3 kernel.
MIN_CROP = 75


@dataclass
class DataConfig:
    train: Optional[str] = None  # CSV or folder with real/ and fake/; None = the built-in demo set
    test: Optional[str] = None  # folder, CSV of paths or Kaggle template; None = demo test part (demo only)
    train_root: Optional[str] = None  # folder the training CSV's relative paths resolve against (default: CSV's)
    test_root: Optional[str] = None  # same for the test CSV (the seed's template names files in test_v1.1/)
    resize: int = 256  # every image is decoded once and resized to resize x resize
    crop: int = 156  # centre crop fed to the network (the seed: "fake features are in the centre")
    decode_threads: int = 0  # threads decoding images on the driver; 0 = one per core
    cache: str = "auto"  # auto | memory (object store) | disk (memory-mapped file per node) | off (decode each run)
    cache_dir: Optional[str] = None  # where decoded arrays are kept; None = $RAYDF_CACHE/decoded or ~/.cache/raydf
    on_bad: str = "skip"  # unreadable image: skip (leave it out, list it in bad_inputs.csv) | error (stop)


@dataclass
class DemoConfig:
    n_train: int = 1200
    n_test: int = 400
    size: int = 256
    seed: int = 0
    strength: float = 1.0  # how visible the fake's central swap artefact is


@dataclass
class TrainConfig:
    folds: int = 4
    epochs: int = 60
    batch_size: int = 64
    eval_batch_size: int = 128
    patience: int = 7  # epochs without a lower validation loss before a fold stops
    seed: int = 42
    split: str = "kfold"  # kfold (the seed's) | stratified | group (needs a group column)
    group_by: Optional[str] = None  # training CSV column naming each image's source (default: `group`, if any)
    augment: bool = True  # the seed's albumentations pipeline; false = resize + crop only
    fast_augment: bool = True  # the same augmentations computed on the crop (raydf.transforms.FastTrainTransform)
    compile: bool = False  # torch.compile the model (GPU; pays a compile time per fold)
    precision: str = "auto"  # auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16


@dataclass
class ModelConfig:
    dropout: float = 0.6


@dataclass
class OptimConfig:
    lr: float = 0.0015
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4  # decoupled, as torch_optimizer.RAdam applied it
    eps: float = 1e-8


@dataclass
class SchedConfig:
    t_max: int = 50  # CosineAnnealingLR period in epochs, stepped once per epoch
    eta_min: float = 0.0


@dataclass
class ResourcesConfig:
    gpus_per_fold: Optional[float] = None  # None = 1 when the cluster has GPUs, else 0; fractions share a GPU
    cpus_per_fold: int = 1  # also the torch thread count of a fold on CPU
    # DataLoader worker processes per fold; None = cpus_per_fold - 1 on a GPU (one core drives the GPU), and 0 on
    # CPU, where augmenting in the training process costs ~5% of a step and workers would take cores from torch.
    loader_workers: Optional[int] = None


@dataclass
class PredictConfig:
    batch_size: int = 128
    actors: int = 0  # inference actors; 0 = one per GPU, or one on a CPU-only cluster
    tta: bool = False  # also predict the horizontally flipped image and average the two probabilities
    actor_restarts: int = 0  # times a dead inference actor is restarted (-1: forever; > 0 makes Ray log an error)


@dataclass
class RayConfig:
    address: Optional[str] = None  # None = start a local instance; "auto", "host:port" or "ray://host:10001"
    max_retries: int = 2  # times Ray re-runs a fold task whose worker died
    # On a running cluster with no node that fits a fold yet: how long to wait for the autoscaler to start one
    # (a GPU instance boots and runs its setup_commands in ~5-10 min); 0 = refuse at once.
    scale_up_timeout_s: float = 900.0


@dataclass
class Config:
    run_dir: Optional[str] = None  # None = runs/<timestamp>; a path or a URI (s3://, gs://, file://)
    resume: Optional[str] = None  # a run directory to continue (python -m raydf.train resume=RUN_DIR)
    data: DataConfig = field(default_factory=DataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def valid_keys(node: Any = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, e.g. `train.epochs`."""
    keys = []
    for f in dataclasses.fields(node):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += valid_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" not in valid_keys():
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _check_keys(keys: list[str], source: str) -> None:
    known = valid_keys()
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}' in {source}.{hint} Valid keys: {', '.join(known)}")


def resolve_config_path(name: str) -> Path:
    """A path to a YAML file, or the name of one in `configs/` (`seed` -> configs/seed.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    choices = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file '{name}' not found (neither a file nor one of configs/: {choices})")


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    _check_keys(_flatten(OmegaConf.to_container(other)), source)
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        first_line = str(getattr(e, "msg", e)).splitlines()[0]  # the rest is OmegaConf's internal type names
        raise ConfigError(f"config key '{key}' in {source}: {first_line}") from None


def load_config(config: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Schema defaults, then the YAML file (default `configs/default.yaml`), then `key=value` overrides."""
    cfg = OmegaConf.structured(Config)
    path = resolve_config_path(str(config) if config else DEFAULT_CONFIG)
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors come in several exception types
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(file_cfg).__name__}")
    cfg = _merge(cfg, file_cfg, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=5)")
    if overrides:
        try:
            dot = OmegaConf.from_dotlist(list(overrides))
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot parse overrides {list(overrides)}: {e}") from None
        cfg = _merge(cfg, dot, "the command line")
    result: Config = OmegaConf.to_object(cfg)
    validate(result)
    return result


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def validate(cfg: Config) -> None:
    """Value checks the types cannot express; each failure names the key and the accepted values."""
    _require(cfg.train.folds >= 2, "train.folds", f"must be at least 2 (got {cfg.train.folds})")
    _require(cfg.train.epochs >= 1, "train.epochs", f"must be at least 1 (got {cfg.train.epochs})")
    _require(cfg.train.batch_size >= 2, "train.batch_size",
             f"must be at least 2: InceptionResnetV1's BatchNorm1d cannot train on one image (got {cfg.train.batch_size})")
    _require(cfg.train.eval_batch_size >= 1, "train.eval_batch_size", "must be at least 1")
    _require(cfg.train.patience >= 1, "train.patience", f"must be at least 1 (got {cfg.train.patience})")
    _require(cfg.train.split in ("kfold", "stratified", "group"), "train.split",
             f"must be one of kfold, stratified, group (got '{cfg.train.split}')")
    _require(cfg.data.on_bad in ("skip", "error"), "data.on_bad", f"must be skip or error (got '{cfg.data.on_bad}')")
    _require(cfg.data.decode_threads >= 0, "data.decode_threads", "must be >= 0 (0 = one per core)")
    _require(cfg.train.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision",
             f"must be one of auto, fp32, bf16, fp16 (got '{cfg.train.precision}')")
    _require(cfg.data.cache in ("auto", "memory", "disk", "off"), "data.cache",
             f"must be one of auto, memory, disk, off (got '{cfg.data.cache}')")
    _require(cfg.optim.lr > 0, "optim.lr", f"must be positive (got {cfg.optim.lr})")
    _require(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _require(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas",
             f"must be two numbers in [0, 1) (got {cfg.optim.betas})")
    _require(0 <= cfg.model.dropout < 1, "model.dropout", f"must be in [0, 1) (got {cfg.model.dropout})")
    _require(cfg.sched.t_max >= 1, "sched.t_max", f"must be at least 1 (got {cfg.sched.t_max})")
    _require(cfg.data.crop >= MIN_CROP, "data.crop",
             f"must be at least {MIN_CROP}, the smallest input InceptionResnetV1 accepts (got {cfg.data.crop})")
    _require(cfg.data.resize >= cfg.data.crop, "data.resize",
             f"must be at least data.crop={cfg.data.crop} (got {cfg.data.resize})")
    g = cfg.resources.gpus_per_fold
    _require(g is None or g >= 0, "resources.gpus_per_fold", f"must be >= 0 or null for auto (got {g})")
    _require(g is None or g <= 1 or float(g).is_integer(), "resources.gpus_per_fold",
             f"above 1 must be a whole number (got {g})")
    _require(cfg.resources.cpus_per_fold >= 1, "resources.cpus_per_fold", "must be at least 1")
    _require(cfg.resources.loader_workers is None or cfg.resources.loader_workers >= 0, "resources.loader_workers",
             "must be >= 0, or null for automatic")
    _require(cfg.predict.batch_size >= 1, "predict.batch_size", "must be at least 1")
    _require(cfg.predict.actors >= 0, "predict.actors", "must be >= 0 (0 = automatic)")
    _require(cfg.predict.actor_restarts >= -1, "predict.actor_restarts", "must be >= 0, or -1 for unlimited")
    _require(cfg.ray.max_retries >= -1, "ray.max_retries", "must be >= 0, or -1 for unlimited")
    _require(cfg.ray.scale_up_timeout_s >= 0, "ray.scale_up_timeout_s", "must be >= 0 (seconds; 0 = do not wait)")
    _require(cfg.demo.n_train >= 4 * cfg.train.folds or cfg.data.train is not None, "demo.n_train",
             f"must be at least 4 x train.folds = {4 * cfg.train.folds}")


_DATA_PATHS = {
    "data.train": ("a CSV (path,label) or a folder with real/ and fake/", False),
    "data.test": ("a folder of images, a CSV of paths or a Kaggle submission template", False),
    "data.train_root": ("the folder the training CSV's relative paths resolve against", True),
    "data.test_root": ("the folder the test CSV's relative paths resolve against", True),
}


def check_data_paths(cfg: Config) -> None:
    """Each data path that is set must exist (the roots must be folders); the error names the key.

    Not part of `validate`: a finished run's saved config must load even after its data has moved.
    """
    for key, (what, folder) in _DATA_PATHS.items():
        value = getattr(cfg.data, key.split(".")[1])
        if value is None:
            continue
        path = Path(value).expanduser()
        shown = value if path.is_absolute() else f"{value} (in {Path.cwd()})"
        _require(path.exists(), key, f"{shown} does not exist; it must be {what}")
        _require(path.is_dir() or not folder, key, f"{shown} is not a folder; it must be {what}")


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved as RUN_DIR/config.yaml; loadable with --config)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of the config (for checkpoint metadata and summary)."""
    return dataclasses.asdict(cfg)
