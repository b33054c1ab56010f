"""A training run, end to end: catalog -> folds -> decode once -> K x S fold tasks -> OOF -> soft vote -> summary.

K folds, each trained with S seeds (`train.seeds`; one by default): every model is named by its
`raydf.runs.model_key.ModelKey`. A run can be resumed (`resume=RUN_DIR`): finished models are read back from their
checkpoints, unfinished ones continue from their last saved epoch, and only missing outputs are produced again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Collection, Optional, Sequence

import numpy as np
import pandas as pd
import ray

from raydf import signals
from raydf.config import Config, check_data_paths, to_dict
from raydf.data.cache_policy import CachePlan
from raydf.data.catalog import read_test
from raydf.data.face_store import is_face_manifest, read_manifest
from raydf.data.preflight import check_test_set
from raydf.distributed.cluster import check_readable_on_every_node
from raydf.distributed.data import plan_cache, share_images
from raydf.distributed.ddp_fold import check_data_parallel
from raydf.distributed.folds import run_folds
from raydf.distributed.inference import soft_vote_predict
from raydf.distributed.preflight import preflight_check
from raydf.distributed.session import RaySession, fold_resources, ray_session
from raydf.errors import ConfigError, DataError, Interrupted, find_user_error
from raydf.inference.calibration import CALIBRATION_FILE, NONE, Calibration
from raydf.models.normalization import input_normalization
from raydf.pipelines.calibration import (
    OOF_BLENDED,
    TEST_MODELS,
    calibration_summary,
    fit_run_calibration,
    model_probs,
    oof_data,
    read_calibration,
    write_calibrated_oof,
    write_test_models,
)
from raydf.pipelines.faces import with_extracted_faces
from raydf.runs.console import CountProgress, FoldProgress
from raydf.runs.model_key import ModelKey, model_keys, run_seeds
from raydf.runs.presets import log_preset_hint
from raydf.runs.report import TEST_LABELS, build_report
from raydf.runs.run_dir import (
    checked_table,
    create_run_dir,
    data_specs,
    empty_run_dir,
    read_csv,
    read_tables,
    reopen_run_dir,
    table_landmarks,
    write_csv,
)
from raydf.runs.runlog import run_log
from raydf.runs.storage import RunStorage
from raydf.runs.submission import aggregate_sources, build_face_submissions, build_submission, source_labels
from raydf.runs.tensorboard_log import TensorBoardLog
from raydf.training.checkpoint import save_fold_checkpoint, try_load_fold_checkpoint
from raydf.training.metrics import classification_metrics
from raydf.training.start_weights import StartWeights, start_weights_for

log = logging.getLogger(__name__)

SUMMARY_FOLD_KEYS = (
    "fold",
    "best_epoch",
    "val_loss",
    "val_acc",
    "epochs_run",
    "started_at",
    "finished_at",
    "node_id",
    "pid",
    "attempts",
    "resumed_from_epoch",
    "peak_rss_mb",
)
# A run of several seeds adds the model's seed to each entry of summary.json's "folds" (one per model).
SUMMARY_SEED_KEY = "seed"


FACE_SUBMISSION = "submission_faces.csv"  # per-face rows when the test set is a faces manifest
SYNTHETIC_PLOT = "synthetic_fakes.png"  # real training faces beside their self-blended fakes (data.synthetic_fakes)
EXPLAIN_DIR = "explain"  # Grad-CAM heatmaps of the most confident test images (predict.explain)
OOF_SOURCES = "oof_sources.csv"  # out-of-fold P(fake) per video/photo when the training set is a faces manifest


class RunInterrupted(Interrupted):
    """Ctrl-C or SIGTERM: the tasks were cancelled and the run directory is consistent (resumable)."""

    @classmethod
    def during(cls, stop: BaseException, run_dir: str, started: bool) -> RunInterrupted:
        how = f"interrupted ({signals.name(stop)})"
        if not started:  # the pre-flight: no run directory yet (the decoded cache is written atomically)
            return cls(
                f"{how} in the pre-flight, before the run directory {run_dir or ''} was written: nothing "
                f"to resume; run the same command again to start over",
                signals.exit_code(stop),
            )
        return cls(
            f"{how}: running folds were cancelled; finished folds and every completed epoch are saved "
            f"in {run_dir}. Resume with:\n  python -m raydf.train resume={run_dir}",
            signals.exit_code(stop),
        )


@dataclass
class _Inputs:
    """A run's checked inputs: the fold table, the test table and its unreadable rows, the training images."""

    storage: RunStorage
    table: pd.DataFrame
    test_df: Optional[pd.DataFrame]
    test_bad: dict
    images: Optional[np.ndarray]  # decoded by the pre-flight (a new run with a decoded cache), else None
    plan: CachePlan  # how the training images are held (data.cache)
    check_seconds: Optional[float] = None  # the pre-flight check of a new run (None: a resumed run)


def _start_run(cfg: Config) -> _Inputs:
    """A new run: check every input, assign folds, write the run directory's first files.

    How the images will be held is decided first (data.cache=auto weighs the set against the nodes): a decoded
    cache is filled by the pre-flight's own decode; otherwise the pre-flight only checks, on the cluster's nodes
    when the set is large.
    """
    empty_run_dir(cfg, "runs/%Y%m%d-%H%M%S")  # refuse a used run_dir before the (long) pre-flight
    tables = read_tables(cfg)
    plan = plan_cache(tables[0]["path"].tolist(), cfg)
    n_files = len(tables[0]) + (0 if tables[1] is None else len(tables[1]))
    t0 = time.time()
    table, test_df, inputs = checked_table(
        cfg,
        tables=tables,
        decode=plan.mode in ("memory", "disk", "off"),
        disk=plan.mode == "disk",
        check=preflight_check(n_files, cfg.data.preflight_spread_min),
    )
    storage = create_run_dir(cfg, table, inputs=inputs)
    return _Inputs(storage, table, test_df, inputs.test_bad, inputs.images, plan, time.time() - t0)


def _reopen_run(cfg: Config) -> _Inputs:
    """A resumed run: the saved fold table, the test set checked again (it is not stored in the run)."""
    storage, table, test_spec = reopen_run_dir(cfg)
    test_df = read_test(test_spec, cfg.data.test_root) if test_spec else None
    test_bad = check_test_set(test_df, cfg.data.decode_threads, cfg.data.on_bad) if test_df is not None else {}
    return _Inputs(storage, table, test_df, test_bad, None, plan_cache(table["path"].tolist(), cfg))


def _readable(test_df: pd.DataFrame, test_bad: dict) -> list[str]:
    """The test paths the pre-flight could read, in order (one vectorised mask: test sets of millions of rows)."""
    return test_df["path"].to_numpy()[_readable_rows(test_df, test_bad)].tolist()


def _finished_models(storage: RunStorage, keys: list[ModelKey]) -> dict[ModelKey, tuple[dict, dict]]:
    """{key: (numpy weights, info)} of the models whose checkpoint is complete and readable."""
    done = {}
    for k in keys:
        loaded = try_load_fold_checkpoint(storage, k)
        if loaded and "history" in loaded[1]:
            weights, meta = loaded
            info = dict(
                meta,
                val_index=np.asarray(meta["val_index"]),
                val_prob_fake=np.asarray(meta["val_prob_fake"]),
                val_blend_prob_fake=np.asarray(meta.get("val_blend_prob_fake", [])),
            )
            done[k] = ({name: t.numpy() for name, t in weights.items()}, info)
    return done


def train(cfg: Config) -> str:
    """Run (or resume) the whole K-fold training and inference; returns the run directory."""
    t_start = time.time()
    timings: dict[str, float] = {}
    check_data_paths(cfg)
    log_preset_hint(cfg)  # on the user's own labelled set: the preset that measured best, when this run differs
    # Read or downloaded once, here, before the long pre-flight: a file that does not fit, or no network for
    # model.pretrained, stops the run before anything is decoded or trained. The folds share this one copy.
    start = start_weights_for(cfg)
    if not cfg.resume:  # a resumed run's config already names the faces manifests it was trained on
        empty_run_dir(cfg, "runs/%Y%m%d-%H%M%S")  # refuse a used run_dir before the (long) extraction
        cfg = with_extracted_faces(cfg)
    # One Ray session from here on: auto's choice of cache weighs the nodes, and the pre-flight of a large set runs
    # on them.
    with ray_session(cfg.ray.address) as session:
        check_data_parallel(cfg, session)  # a data-parallel fold no node can hold: refused before the pre-flight
        try:
            inputs = _reopen_run(cfg) if cfg.resume else _start_run(cfg)
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM (raydf.signals)
            started = bool(cfg.resume) or bool(cfg.run_dir) and RunStorage(cfg.run_dir).exists("folds.csv")
            raise RunInterrupted.during(stop, cfg.run_dir, started) from None
        try:
            return _run(cfg, inputs, session, start, t_start, timings)
        except KeyboardInterrupt as stop:
            raise RunInterrupted.during(stop, cfg.run_dir, started=True) from None


def _run(
    cfg: Config, inputs: _Inputs, session: RaySession, start: Optional[StartWeights], t_start: float, timings: dict
) -> str:
    """The run once its directory exists: folds, OOF, soft vote, summary and report."""
    storage, table, test_df, test_bad, images = (
        inputs.storage,
        inputs.table,
        inputs.test_df,
        inputs.test_bad,
        inputs.images,
    )
    inputs.images = None  # the folds' copy is in the object store or a cache file: this one goes with `images`
    timings["preflight_seconds"] = time.time() - t_start  # tables, Ray's start, every image checked, folds
    if inputs.check_seconds is not None:
        timings["preflight_check_seconds"] = inputs.check_seconds  # every image checked (decoded), folds assigned
    folds = table["fold"].to_numpy()
    keys = model_keys(cfg)
    finished = _finished_models(storage, keys) if cfg.resume else {}
    todo = [k for k in keys if k not in finished]
    bad = read_csv(storage, "bad_inputs.csv") if storage.exists("bad_inputs.csv") else pd.DataFrame({"set": []})
    n_bad = {s: int((bad["set"] == s).sum()) for s in ("train", "test")}
    # RUN_DIR/raydf.log keeps the log and the traceback of whatever stops the run (off the console).
    logged = run_log(storage.local_path("raydf.log")) if storage.local else contextlib.nullcontext()
    with logged:
        seeds = run_seeds(cfg)
        log.info(
            "run directory %s: %d training images in %d folds%s%s%s%s",
            cfg.run_dir,
            len(table),
            cfg.train.folds,
            f" x {len(seeds)} seeds {seeds}" if len(seeds) > 1 else "",
            f" ({n_bad['train']} unreadable left out)" if n_bad["train"] else "",
            f", {len(test_df)} test images" + (f" ({n_bad['test']} unreadable, flagged)" if n_bad["test"] else "")
            if test_df is not None
            else "",
            f"; resuming, {_listed(list(finished))} already finished" if cfg.resume else "",
        )
        if test_df is not None:  # decoded by Ray Data on any node: fail now, not after the training
            check_readable_on_every_node(_readable(test_df, test_bad), "data.test")
        landmarks = table_landmarks(cfg, table)  # what the self-blended fakes' masks follow (synth.mask)
        if cfg.data.synthetic_fakes != "off" and storage.local and not storage.exists(SYNTHETIC_PLOT):
            _plot_synthetic_fakes(cfg, table, storage.local_path(SYNTHETIC_PLOT), landmarks)
        infos, weight_refs = _train_folds(
            cfg, session, storage, table, folds, todo, finished, images, inputs.plan, start, timings, landmarks
        )
        del images
        summary = _summarize(cfg, storage, table, folds, infos)
        if start is not None:
            summary["start_weights"] = {"source": start.source, "summary": start.summary()}
        if test_df is not None:  # calibrated there, once the models' P(fake) of the test set are known
            prior = float(table["label"].mean())  # P(fake) of an unreadable test image
            test_summary, calibration = _predict_test(
                cfg, storage, test_df, weight_refs, test_bad, prior, timings, infos
            )
        else:
            test_summary, calibration = {}, _calibrate(cfg, storage, infos, timings)
        summary.update(calibration_summary(calibration))
        summary.update(test_summary)
    summary["bad_inputs"] = n_bad
    timings["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    plan = inputs.plan
    summary["data_cache"] = {"mode": plan.mode, "in_object_store": plan.in_object_store, "reason": plan.reason}
    summary["timings"] = timings
    summary["wall_seconds"] = time.time() - t_start
    storage.write_text("summary.json", json.dumps(summary, indent=2))
    if storage.local:
        build_report(storage.local_path())
    else:
        log.info("plots and report.md: copy the run directory to a local folder and run python -m raydf.report")
    return cfg.run_dir


def _train_folds(
    cfg: Config,
    session: RaySession,
    storage: RunStorage,
    table: pd.DataFrame,
    folds: np.ndarray,
    todo: list[ModelKey],
    finished: dict[ModelKey, tuple[dict, dict]],
    images: Optional[np.ndarray],
    plan: CachePlan,
    start: Optional[StartWeights],
    timings: dict,
    landmarks: Optional[np.ndarray] = None,
) -> tuple[list[dict], list[ray.ObjectRef]]:
    """Train the models in `todo` in parallel; returns every model's info and best-weights ref, in the run's model
    order (`model_keys`: seed by seed, fold by fold); the models of `finished` are kept as they are.

    `images`: the training set the pre-flight decoded (None on resume: then it comes from the cache).
    `landmarks`: the rows' face landmarks for the self-blended fakes' masks (`table_landmarks`), or None.
    """
    infos = {k: info for k, (_, info) in finished.items()}
    refs = {k: ray.put(weights) for k, (weights, _) in finished.items()}
    if todo:
        resources = fold_resources(cfg, session)
        t0 = time.time()
        images_ref = share_images(table["path"].tolist(), cfg, images, plan)
        del images
        labels_ref = ray.put(table["label"].to_numpy(np.int64))
        landmarks_ref = ray.put(landmarks) if landmarks is not None else None
        timings["share_images_seconds"] = time.time() - t0
        start_ref = ray.put(start.as_numpy()) if start else None

        def on_done(info: dict, weights_ref: ray.ObjectRef) -> None:
            meta = {k: v for k, v in info.items() if k not in ("val_index", "val_prob_fake", "val_blend_prob_fake")}
            meta.update(
                val_index=info["val_index"].tolist(),
                val_prob_fake=info["val_prob_fake"].tolist(),
                val_blend_prob_fake=info["val_blend_prob_fake"].tolist(),
                model=cfg.model.name,  # the backbone that rebuilds these weights
                input_norm=input_normalization(cfg.model).to_dict(),  # what predict, serve and Grad-CAM feed it
                start_weights=start.source if start else None,
                config=to_dict(cfg),
            )
            key = ModelKey.of(info, run_seeds(cfg)[0])
            save_fold_checkpoint(storage, key, ray.get(weights_ref), meta)
            log.debug("%s: best weights (epoch %d, attempt %d) saved", key.label, info["best_epoch"], info["attempts"])

        # Every seed of fold k trains on the same rows (folds.csv is one split, by train.seed).
        splits = {k: (np.flatnonzero(folds != k.fold), np.flatnonzero(folds == k.fold)) for k in todo}
        t0 = time.time()
        # Progress events from the fold tasks feed the live display and the TensorBoard files, both on the driver
        # (TensorBoard files only for a local run directory: the writer needs a local folder).
        tb_dir = storage.local_path("tensorboard")
        with (
            FoldProgress(model_keys(cfg), cfg.train.epochs) as display,
            TensorBoardLog(tb_dir) if tb_dir else contextlib.nullcontext(lambda events: None) as tensorboard,
        ):

            def on_events(events: list[dict]) -> None:
                display(events)
                tensorboard(events)

            results = run_folds(
                images_ref,
                labels_ref,
                splits,
                cfg,
                resources,
                storage,
                on_done,
                on_events,
                start_weights_ref=start_ref,
                landmarks_ref=landmarks_ref,
            )
        timings["folds_seconds"] = time.time() - t0
        for k, (ref, info) in results.items():
            infos[k], refs[k] = info, ref
    order = [k for k in model_keys(cfg) if k in infos]
    return [infos[k] for k in order], [refs[k] for k in order]


def _listed(keys: list[ModelKey]) -> str:
    """`folds [0, 2]` (one seed), or the models' names (several)."""
    if all(not k.several_seeds for k in keys):
        return f"folds {sorted(k.fold for k in keys)}"
    return f"models {[k.name for k in keys]}"


def _summarize(cfg: Config, storage: RunStorage, table: pd.DataFrame, folds: np.ndarray, infos: list[dict]) -> dict:
    """oof.csv, history.csv and the fold and CV part of summary.json.

    The out-of-fold P(fake) of an image is the mean over seeds of its fold's models (one model: its own). A run of
    several seeds also writes each seed's out-of-fold P(fake) (oof.csv's `prob_fake_s{seed}`) and its CV metrics
    (summary.json's `cv_seeds`): what the ensemble of seeds adds over one.
    """
    seeds = run_seeds(cfg)
    per_seed = {s: np.full(len(table), np.nan) for s in seeds}
    for info in infos:
        per_seed[ModelKey.of(info, seeds[0]).seed][info["val_index"]] = info["val_prob_fake"]
    prob = per_seed[seeds[0]] if len(seeds) == 1 else np.mean(np.stack([per_seed[s] for s in seeds]), axis=0)
    oof = pd.DataFrame({"path": table["path"], "label": table["label"], "fold": folds, "prob_fake": prob})
    if len(seeds) > 1:
        oof = oof.assign(**{f"prob_fake_s{s}": per_seed[s] for s in seeds})
    write_csv(storage, "oof.csv", oof)
    blended = [(info, np.asarray(info.get("val_blend_prob_fake", []))) for info in infos]
    reals = [np.asarray(info["val_index"])[table["label"].to_numpy()[info["val_index"]] == 0] for info in infos]
    # data.synthetic_fakes=only: the validation reals' self-blended fakes (every fold has them, one per real)
    if any(len(p) for _, p in blended) and all(len(p) == len(r) for (_, p), r in zip(blended, reals)):
        write_csv(
            storage,
            OOF_BLENDED,
            pd.DataFrame(
                {
                    "path": np.concatenate([table["path"].to_numpy()[r] for r in reals]),  # the real it was made from
                    "label": 1,
                    "fold": np.concatenate([np.full(len(p), info["fold"]) for info, p in blended]),
                    "prob_fake": np.concatenate([p for _, p in blended]),
                }
            ),
        )
    write_csv(storage, "history.csv", pd.DataFrame([row for info in infos for row in info["history"]]))
    entry_keys = SUMMARY_FOLD_KEYS
    if len(seeds) > 1:  # fold, seed, best_epoch, ...
        entry_keys = (SUMMARY_FOLD_KEYS[0], SUMMARY_SEED_KEY, *SUMMARY_FOLD_KEYS[1:])
    summary = {
        "folds": [{k: info.get(k) for k in entry_keys} for info in infos],  # peak_rss_mb: None in old runs
        "cv": classification_metrics(oof["label"], oof["prob_fake"]),
    }
    if len(seeds) > 1:
        summary["cv_seeds"] = {str(s): classification_metrics(oof["label"], per_seed[s]) for s in seeds}
    train_spec = data_specs(cfg)[0]
    if is_face_manifest(train_spec):  # faces of videos/photos: also scored per video/photo
        manifest, _ = read_manifest(train_spec)
        source_of = dict(zip(manifest["path"], manifest["source"]))
        per_face = oof.assign(source=oof["path"].map(source_of), flag="")
        per_source = aggregate_sources(per_face, manifest.iloc[:0], cfg.predict.aggregate)
        per_source["label"] = per_face.groupby("source", sort=False)["label"].first().to_numpy()
        per_source["fold"] = per_face.groupby("source", sort=False)["fold"].first().to_numpy()
        write_csv(storage, OOF_SOURCES, per_source[["image", "label", "fold", "prob_fake", "n_faces"]])
        summary["cv_sources"] = dict(
            classification_metrics(per_source["label"], per_source["prob_fake"]), n=len(per_source)
        )
    return summary


def _calibrate(cfg: Config, storage: RunStorage, infos: list[dict], timings: dict) -> Calibration:
    """The run's calibration: fitted on its out-of-fold files (calibration.json; with test_models.csv, to the vote
    of all its models), or, for a resumed run that has one fitted on these folds already, read back (its submission
    may have been written with it)."""
    t0 = time.time()
    if cfg.resume and storage.exists(CALIBRATION_FILE):
        try:
            calibration = read_calibration(storage, infos)
            write_calibrated_oof(storage, calibration, oof_data(cfg, storage))  # oof.csv was written again
            return calibration
        except ConfigError as e:
            log.warning("%s; fitting it again", e)
    calibration = fit_run_calibration(cfg, storage, infos)
    timings["calibration_seconds"] = time.time() - t0
    return calibration


def _predict_test(
    cfg: Config,
    storage: RunStorage,
    test_df: pd.DataFrame,
    weight_refs: list[ray.ObjectRef],
    test_bad: Collection[int],
    prior: float,
    timings: dict,
    infos: list[dict],
) -> tuple[dict, Calibration]:
    """submission.csv by the distributed soft vote (kept as it is when a resumed run already has it), and the
    summary's test metrics (`test`; with a faces manifest as the test set also `test_faces`, and submission.csv
    then has one row per video/photo, submission_faces.csv one per face); and the run's calibration (`_calibrate`),
    fitted once each model's P(fake) of the test set is in test_models.csv: the models' spread there fits T to
    their vote.

    Unreadable test rows are never dropped: they get `prior` and a flag. Test metrics score the submission
    as written (those rows count with the prior).
    """
    test_spec = data_specs(cfg)[1]
    faces = read_manifest(test_spec) if is_face_manifest(test_spec) else None
    if cfg.resume and storage.exists("submission.csv") and storage.exists(TEST_MODELS):
        log.info("submission.csv exists: not predicted again")
        calibration = _calibrate(cfg, storage, infos, timings)
        return rewrite_test_outputs(cfg, storage, calibration), calibration
    if cfg.resume and storage.exists("submission.csv"):  # written before calibration existed
        log.info("submission.csv exists: not predicted again")
        calibration = _calibrate(cfg, storage, infos, timings)
        sub = read_csv(storage, "submission.csv")
        face_sub = read_csv(storage, FACE_SUBMISSION) if faces is not None else sub
        uncalibrated = None
    else:
        t0 = time.time()
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.resources.gpus_per_fold != 0 else 0.0
        readable = _readable(test_df, test_bad)
        try:
            pred = predict_paths(cfg, readable, weight_refs, gpus)  # each model's P(fake): calibrated below
        except Exception as e:  # a test file changed since the pre-flight: say so, and how to go on
            user = find_user_error(e)
            if user is None:
                raise
            raise DataError(
                f"predicting the test set failed: {user}\nThe fold checkpoints are saved: once "
                f"fixed, run python -m raydf.train resume={cfg.run_dir}"
            ) from e
        write_test_models(storage, readable, pred)
        t_fit = time.time()
        calibration = _calibrate(cfg, storage, infos, timings)
        fit_s = time.time() - t_fit  # counted in calibration_seconds
        models = model_probs(pred)
        prob = calibration.prob(models)
        names = faces[0]["source"].to_numpy()[_readable_rows(test_df, test_bad)] if faces is not None else None
        explain_paths(cfg, weight_refs, readable, prob, storage, EXPLAIN_DIR, names=names)
        timings["inference_seconds"] = time.time() - t0 - fit_s
        log.info("soft vote over %d test images in %.1fs", len(readable), timings["inference_seconds"])
        uncalibrated = models.mean(0)  # the soft vote as before calibration: the report's "before"
        outputs = _write_test_outputs(cfg, storage, test_df, faces, prob, uncalibrated, test_bad, prior, calibration)
        return outputs, calibration
    return _test_metrics(storage, test_df, faces, sub, face_sub, None, calibration), calibration


def _readable_rows(test_df: pd.DataFrame, test_bad: Collection[int]) -> np.ndarray:
    """A mask of the test rows the pre-flight could read."""
    keep = np.ones(len(test_df), dtype=bool)
    keep[list(test_bad)] = False
    return keep


def _write_test_outputs(
    cfg: Config,
    storage: RunStorage,
    test_df: pd.DataFrame,
    faces: Optional[tuple[pd.DataFrame, pd.DataFrame]],
    prob_fake: np.ndarray,
    uncalibrated: np.ndarray,
    test_bad: Collection[int],
    prior: float,
    calibration: Calibration,
) -> dict:
    """submission.csv (and submission_faces.csv) from the readable rows' calibrated P(fake), cut at the calibration's
    threshold; the summary's test metrics, calibrated and not (`test_uncalibrated`)."""
    cut = calibration.threshold
    if faces is None:
        sub = face_sub = build_submission(test_df, prob_fake, test_bad, prior, cut)
        storage.write_text("submission.csv", sub.to_csv(index=False))
        raw = raw_face = build_submission(test_df, uncalibrated, test_bad, prior)
    else:
        face_sub, sub = build_face_submissions(test_df, prob_fake, test_bad, prior, *faces, cfg.predict.aggregate, cut)
        write_csv(storage, FACE_SUBMISSION, face_sub)
        write_csv(storage, "submission.csv", sub)
        raw_face, raw = build_face_submissions(test_df, uncalibrated, test_bad, prior, *faces, cfg.predict.aggregate)
    return _test_metrics(storage, test_df, faces, sub, face_sub, (raw, raw_face), calibration)


def _test_metrics(
    storage: RunStorage,
    test_df: pd.DataFrame,
    faces: Optional[tuple[pd.DataFrame, pd.DataFrame]],
    sub: pd.DataFrame,
    face_sub: pd.DataFrame,
    raw: Optional[tuple[pd.DataFrame, pd.DataFrame]],
    calibration: Calibration,
) -> dict:
    """The summary's test metrics of `sub` (and `face_sub`), and test_labels.csv for the report's plots (with the
    uncalibrated P(fake) `raw` when known: the reliability diagram's "before")."""
    if "label" not in test_df.columns:
        return {}
    labels = test_df["label"].to_numpy() if faces is None else source_labels(*faces).reindex(sub["image"]).to_numpy()
    frame = pd.DataFrame({"image": sub["image"], "label": labels})
    if raw is not None:
        frame["prob_fake_uncalibrated"] = raw[0]["prob_fake"].to_numpy()
    write_csv(storage, TEST_LABELS, frame)
    out = {"test": classification_metrics(labels, sub["prob_fake"])}
    if faces is not None:
        out["test_faces"] = dict(classification_metrics(test_df["label"], face_sub["prob_fake"]), n=len(face_sub))
    if raw is not None and calibration.method != "none":
        out["test_uncalibrated"] = classification_metrics(labels, raw[0]["prob_fake"])
    known = ~pd.isna(labels)
    out["threshold_test_accuracy"] = {
        "at_threshold": float((sub["label"].to_numpy()[known] == labels[known]).mean()),
        "at_0.5": float(((sub["prob_fake"].to_numpy()[known] > 0.5) == labels[known]).mean()),
    }
    return out


def rewrite_test_outputs(cfg: Config, storage: RunStorage, calibration: Calibration) -> dict:
    """The run's submission, per-face submission and test metrics again from test_models.csv (each model's P(fake)
    of the readable test rows) under `calibration`: no inference (`raydf.calibrate`, a resumed run)."""
    test_spec = data_specs(cfg)[1]
    faces = read_manifest(test_spec) if is_face_manifest(test_spec) else None
    test_df = read_test(test_spec, cfg.data.test_root if faces is None else None)
    bad = read_csv(storage, "bad_inputs.csv") if storage.exists("bad_inputs.csv") else pd.DataFrame({"set": []})
    test_bad = set(bad.loc[bad["set"] == "test", "row"].astype(int)) if len(bad) else set()
    models = model_probs(read_csv(storage, TEST_MODELS))
    prior = float(read_csv(storage, "folds.csv")["label"].mean())
    return _write_test_outputs(
        cfg, storage, test_df, faces, calibration.prob(models), models.mean(0), test_bad, prior, calibration
    )


def predict_paths(
    cfg: Config,
    paths: list[str],
    weight_refs: list[ray.ObjectRef],
    gpus_per_actor: float,
    tta: Optional[bool] = None,
    calibration: Calibration = NONE,
) -> pd.DataFrame:
    """The distributed soft vote of `weight_refs` over `paths` with the config's predict settings, with progress;
    `calibration` makes its P(fake) (`prob_fake`; each model's in `prob_fold{k}`)."""
    with CountProgress(len(paths), f"soft vote of {len(weight_refs)} folds") as progress:
        return soft_vote_predict(
            paths,
            weight_refs,
            resize=cfg.data.resize,
            crop=cfg.data.crop,
            dropout=cfg.model.dropout,
            model=cfg.model.name,
            norm=input_normalization(cfg.model),
            batch_size=cfg.predict.batch_size,
            actors=cfg.predict.actors,
            gpus_per_actor=gpus_per_actor,
            precision=cfg.train.precision,
            tta=cfg.predict.tta if tta is None else tta,
            actor_restarts=cfg.predict.actor_restarts,
            calibration=calibration,
            on_rows=progress.update,
        )


def explain_paths(
    cfg: Config,
    weights: list,
    paths: list[str],
    prob_fake: np.ndarray,
    storage: RunStorage,
    folder: str,
    n: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
) -> None:
    """Grad-CAM heatmaps of the `n` (default: predict.explain) most confident fakes and reals of `paths`, computed on
    the driver from the fold weights (ObjectRefs or state dicts). They illustrate a finished result: a failure is a
    warning, not the end of the run. `names`: what to call each path in the index (a face's video/photo)."""
    n = cfg.predict.explain if n is None else n
    if n <= 0 or not len(paths):
        return
    from raydf.inference.ensemble import EnsembleSettings, FoldEnsemble
    from raydf.inference.explain import write_explanations

    t0 = time.time()
    try:
        states = [ray.get(w) if isinstance(w, ray.ObjectRef) else w for w in weights]
        index = write_explanations(
            FoldEnsemble(states, EnsembleSettings.from_config(cfg)), paths, prob_fake, n, storage, folder, names
        )
    except Exception as e:  # e.g. a backbone whose last stage Grad-CAM cannot hook
        log.warning("no heatmaps: %s: %s (the predictions are written)", type(e).__name__, e)
        return
    log.info(
        "Grad-CAM heatmaps of %d confident fakes and %d reals in %s (%.1fs)",
        int((index["kind"] == "fake").sum()),
        int((index["kind"] == "real").sum()),
        storage.path(folder),
        time.time() - t0,
    )


def _plot_synthetic_fakes(
    cfg: Config, table: pd.DataFrame, path, landmarks: Optional[np.ndarray] = None, n: int = 6
) -> None:
    """A picture of what the network is taught: `n` real training faces, their self-blended fakes and masks (around
    the faces' `landmarks` (N, 5, 2), per row of `table`, where given; see `table_landmarks`)."""
    from raydf.data.images import decode_image
    from raydf.data.self_blend import BlendSettings, self_blend
    from raydf.runs.plots import synthetic_fakes

    reals = table[table["label"] == 0]
    rows = reals.sample(min(n, len(reals)), random_state=cfg.train.seed)
    settings = BlendSettings(mask_scale=cfg.synth.mask_scale, edge=cfg.synth.edge)
    sources = np.stack([decode_image(str(p), cfg.data.resize) for p in rows["path"]])
    points = landmarks[table.index.get_indexer(rows.index)] if landmarks is not None else [None] * len(rows)
    blends = []
    for i, (img, lm) in enumerate(zip(sources, points)):
        rng = np.random.default_rng([cfg.train.seed, i])
        # synth.other: some fakes carry the next shown face instead of their own (as the folds draw them)
        d = (
            (i + 1) % len(sources)
            if cfg.synth.other > 0 and len(sources) > 1 and rng.random() < cfg.synth.other
            else None
        )
        blends.append(self_blend(img, rng, settings, lm, *((None, None) if d is None else (sources[d], points[d]))))
    synthetic_fakes(sources, np.stack([b[0] for b in blends]), np.stack([b[1] for b in blends]), path, landmarks=points)
