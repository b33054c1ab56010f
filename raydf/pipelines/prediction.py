"""Predicting a new set with a finished run's fold checkpoints (K, or K x S with several seeds): the same distributed
soft vote as training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from raydf.config import DEFAULT_MODEL, with_values
from raydf.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from raydf.config import Config
    from raydf.inference.calibration import Calibration

log = logging.getLogger(__name__)


def predict(
    run_dir: str,
    images: str,
    out: str,
    image_root: Optional[str] = None,
    address: Optional[str] = None,
    tta: Optional[bool] = None,
    explain: int = 0,
) -> str:
    """Write `image,label,prob_fake` for `images` with the run's K fold checkpoints (paths or URIs).

    `tta` (horizontal-flip test-time augmentation) defaults to the run's `predict.tta`. `explain` > 0 also writes
    Grad-CAM heatmaps of that many most confident fakes and reals into OUT's stem + `_explain/`.
    """
    import ray

    from raydf.data.catalog import read_test
    from raydf.data.face_store import is_face_manifest, read_manifest
    from raydf.data.preflight import check_test_set
    from raydf.distributed.cluster import check_readable_on_every_node
    from raydf.distributed.session import ray_session
    from raydf.pipelines.training import explain_paths, predict_paths
    from raydf.runs.run_dir import read_csv, write_csv
    from raydf.runs.storage import RunStorage
    from raydf.runs.submission import build_face_submissions, write_submission

    storage = RunStorage(run_dir)
    cfg, checkpoints = load_finished_run(run_dir)
    calibration = run_calibration(run_dir, checkpoints)  # refused here, before any work, when it is not this run's
    images = faces_of(cfg, images, image_root)  # videos, or photos for a run trained on faces: their faces manifest
    faces = read_manifest(images) if is_face_manifest(images) else None
    test_df = read_test(images, image_root if faces is None else None)
    bad = check_test_set(test_df, cfg.data.decode_threads, cfg.data.on_bad)  # before Ray starts
    # The prior an unreadable image gets: the fraction of fakes among the run's training images.
    prior = float(read_csv(storage, "folds.csv")["label"].mean())
    with ray_session(address or cfg.ray.address):
        # Ray Data decodes them on any node
        check_readable_on_every_node([p for i, p in enumerate(test_df["path"]) if i not in bad], "--images")
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        refs = [ray.put({k: v.numpy() for k, v in weights.items()}) for weights, _ in checkpoints]
        readable = [p for i, p in enumerate(test_df["path"]) if i not in bad]
        pred = predict_paths(cfg, readable, refs, gpus_per_actor=gpus, tta=tta, calibration=calibration)
    if explain:
        folder_storage, folder = RunStorage.for_file(explain_dir(out))
        weights = [w for w, _ in checkpoints]
        names = None if faces is None else [src for i, src in enumerate(faces[0]["source"]) if i not in bad]
        explain_paths(cfg, weights, readable, pred["prob_fake"].to_numpy(), folder_storage, folder, explain, names)
    if faces is None:
        write_submission(*RunStorage.for_file(out), test_df, pred, bad, prior, calibration.threshold)
        log.info("wrote %d predictions of %d fold models to %s", len(test_df), len(checkpoints), out)
        return str(out)
    face_sub, sub = build_face_submissions(
        test_df, pred["prob_fake"].to_numpy(), bad, prior, *faces, cfg.predict.aggregate, calibration.threshold
    )
    faces_out = faces_file(out)
    write_csv(*RunStorage.for_file(faces_out), face_sub)
    write_csv(*RunStorage.for_file(out), sub)
    log.info(
        "wrote %d predictions (%s of %d faces, %d fold models) to %s; per face: %s",
        len(sub),
        cfg.predict.aggregate,
        len(face_sub),
        len(checkpoints),
        out,
        faces_out,
    )
    return str(out)


def load_finished_run(
    run_dir: str, overrides: Sequence[str] = ()
) -> tuple[Config, list[tuple[dict[str, torch.Tensor], dict]]]:
    """The run's config (with `overrides` that do not change its results) and its fold checkpoints (state dict,
    meta), one per model (`model_keys`: K, or K x S seed by seed); model.name as the checkpoints record it. A run
    whose models are not all finished is a ConfigError."""
    from raydf.runs.model_key import model_keys
    from raydf.runs.resume import resume_config
    from raydf.runs.storage import RunStorage
    from raydf.training.checkpoint import checkpoint_name, load_fold_checkpoint

    storage = RunStorage(run_dir)
    cfg = resume_config(str(run_dir), None, overrides)
    keys = model_keys(cfg)
    missing = [k for k in keys if not storage.exists(checkpoint_name(k))]
    if missing:
        listed = [k.fold for k in missing] if not keys[0].several_seeds else [k.name for k in missing]
        raise ConfigError(
            f"{run_dir} is not a finished raydf run: checkpoints of {'models' if keys[0].several_seeds else 'folds'} "
            f"{listed} are missing (finish it with python -m raydf.train resume={run_dir})"
        )
    checkpoints = [load_fold_checkpoint(storage, key) for key in keys]
    return _with_recorded_backbone(cfg, [meta for _, meta in checkpoints], run_dir), checkpoints


def run_calibration(run_dir: str, checkpoints: list[tuple[dict, dict]]) -> Calibration:
    """The run's calibration.json, checked against its checkpoints (a file of another run, or edited by hand, is a
    ConfigError naming it); a run without one predicts as before calibration existed."""
    from raydf.pipelines.calibration import read_calibration
    from raydf.runs.storage import RunStorage

    return read_calibration(RunStorage(run_dir), [meta for _, meta in checkpoints])


def explain_dir(out: str) -> str:
    """Where `--explain` heatmaps go beside OUT: predictions.csv -> predictions_explain/."""
    stem, dot, ext = str(out).rpartition(".")
    return f"{stem}_explain" if dot and "/" not in ext else f"{out}_explain"


def faces_file(out: str) -> str:
    """Where the per-face rows go beside OUT: predictions.csv -> predictions_faces.csv."""
    stem, dot, ext = str(out).rpartition(".")
    return f"{stem}_faces.{ext}" if dot and "/" not in ext else f"{out}_faces.csv"


def faces_of(cfg: Config, images: str, image_root: Optional[str]) -> str:
    """The faces manifest to predict: `images` itself when it is one; else its faces, extracted (or found done in
    the cache) when the run was trained on faces (with the settings its training faces were made with), when
    `images` holds videos, or, for a run trained with data.faces=auto on photos as they were, when its photos show
    faces small in the frame or off centre (`raydf.pipelines.faces.wants_faces`); else `images` unchanged."""
    from raydf.data.face_store import is_face_manifest
    from raydf.pipelines.faces import extract_faces, faces_cache_dir, has_videos, wants_faces

    if is_face_manifest(images):
        return images
    trained_on_faces = is_face_manifest(cfg.data.train)
    if trained_on_faces:
        cfg = with_run_faces(cfg)
    elif cfg.data.faces == "auto":
        if not wants_faces(cfg, images, image_root, str(images), training=False):
            return images
    elif not has_videos(images, image_root):
        return images
    folder = faces_cache_dir(cfg, images)
    log.info("faces of %s: extracted into %s", images, folder)
    return str(extract_faces(cfg, images, str(folder), image_root).manifest)


def with_run_faces(cfg: Config) -> Config:
    """`cfg` with faces.* as the run's training faces were extracted (their folder's stored settings)."""
    from raydf.data.face_store import FaceStore

    settings = FaceStore(Path(cfg.data.train).parent).settings() or {}
    return with_values(cfg, {f"faces.{k}": v for k, v in settings.items()}, source="the run's faces settings")


def run_face_settings(cfg: Config) -> Optional[dict]:
    """The face settings (`FaceSettings.to_dict()`) new inputs need when the run was trained on extracted faces
    (data.train is a faces manifest); None when it was trained on face crops."""
    from raydf.data.face_store import is_face_manifest
    from raydf.data.faces import FaceSettings

    if not is_face_manifest(cfg.data.train):
        return None
    return FaceSettings.from_config(with_run_faces(cfg).faces, cfg.data.resize).to_dict()


def _with_recorded_backbone(cfg: Config, metas: list[dict], run_dir: str) -> Config:
    """`cfg` with model.name and the input normalisation (model.mean, model.std) as the fold checkpoints record
    them (checkpoints from before raydf recorded them hold InceptionResnetV1 weights, trained on ImageNet-normalised
    inputs); checkpoints of two backbones or two normalisations are an error naming them."""
    from raydf.models.normalization import Normalization

    names = sorted({meta.get("model", DEFAULT_MODEL) for meta in metas})
    if len(names) > 1:
        raise ConfigError(f"{run_dir}: its fold checkpoints hold different backbones ({', '.join(names)})")
    norms = {Normalization.from_meta(meta) for meta in metas}
    if len(norms) > 1:
        raise ConfigError(f"{run_dir}: its fold checkpoints record different input normalisations ({norms})")
    norm = norms.pop()
    values = {"model.name": names[0], "model.mean": list(norm.mean), "model.std": list(norm.std)}
    return with_values(cfg, values, source=f"the checkpoints of {run_dir}")
