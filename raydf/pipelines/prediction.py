"""Predicting a new set with a finished run's K fold checkpoints: the same distributed soft vote as training."""

from __future__ import annotations

import logging
from typing import Optional

from raydf.errors import ConfigError

log = logging.getLogger(__name__)


def predict(
    run_dir: str,
    images: str,
    out: str,
    image_root: Optional[str] = None,
    address: Optional[str] = None,
    tta: Optional[bool] = None,
) -> str:
    """Write `image,label,prob_fake` for `images` with the run's K fold checkpoints (paths or URIs).

    `tta` (horizontal-flip test-time augmentation) defaults to the run's `predict.tta`.
    """
    import ray

    from raydf.data.catalog import read_test
    from raydf.data.preflight import check_test_set
    from raydf.distributed.cluster import check_readable_on_every_node
    from raydf.distributed.session import ray_session
    from raydf.pipelines.training import predict_paths
    from raydf.runs.resume import resume_config
    from raydf.runs.run_dir import read_csv
    from raydf.runs.storage import RunStorage
    from raydf.runs.submission import write_submission
    from raydf.training.checkpoint import load_fold_checkpoint

    storage = RunStorage(run_dir)
    cfg = resume_config(str(run_dir))
    missing = [k for k in range(cfg.train.folds) if not storage.exists(f"checkpoints/fold{k}.pt")]
    if missing:
        raise ConfigError(
            f"{run_dir} is not a finished raydf run: checkpoints of folds {missing} are missing "
            f"(finish it with python -m raydf.train resume={run_dir})"
        )
    test_df = read_test(images, image_root)
    bad = check_test_set(test_df, cfg.data.decode_threads, cfg.data.on_bad)  # before Ray starts
    # The prior an unreadable image gets: the fraction of fakes among the run's training images.
    prior = float(read_csv(storage, "folds.csv")["label"].mean())
    with ray_session(address or cfg.ray.address):
        # Ray Data decodes them on any node
        check_readable_on_every_node([p for i, p in enumerate(test_df["path"]) if i not in bad], "--images")
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        refs = [
            ray.put({k: v.numpy() for k, v in load_fold_checkpoint(storage, fold)[0].items()})
            for fold in range(cfg.train.folds)
        ]
        readable = [p for i, p in enumerate(test_df["path"]) if i not in bad]
        pred = predict_paths(cfg, readable, refs, gpus_per_actor=gpus, tta=tta)
    write_submission(*RunStorage.for_file(out), test_df, pred, bad, prior)
    log.info("wrote %d predictions of %d folds to %s", len(test_df), cfg.train.folds, out)
    return str(out)
