"""Distributed soft vote: a Ray Data actor pool where every actor holds all K fold models."""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import ray
import torch

from raydf.config import DEFAULT_MODEL
from raydf.data.images import decode_image
from raydf.distributed.cluster import alive_nodes
from raydf.inference.calibration import NONE, Calibration
from raydf.inference.ensemble import EnsembleSettings, FoldEnsemble
from raydf.models.normalization import IMAGENET, Normalization

log = logging.getLogger(__name__)

# Up to this many images the soft vote runs in one Ray task, not a Ray Data actor pool (see soft_vote_predict).
SMALL_SET = 256


class SoftVotePredictor:
    """Callable class for `map_batches`: K models loaded once per actor; each batch of paths is decoded once
    and goes through all of them.

    Decoding happens in the actor, not in separate Ray Data tasks: actors hold their CPUs for the whole pass,
    so with as many actors as CPUs a separate decoding task would never be scheduled (a deadlock seen with
    2 actors on 2 CPUs).
    """

    def __init__(
        self,
        weight_refs: Sequence[ray.ObjectRef],
        dropout: float,
        crop: int,
        resize: int,
        precision: str = "auto",
        tta: bool = False,
        threads: int = 1,
        model: str = DEFAULT_MODEL,
        norm: Normalization = IMAGENET,
        calibration: Calibration = NONE,
    ):
        # Ray Data does not resolve ObjectRefs in constructor arguments; fetch the K state dicts here.
        states = ray.get(list(weight_refs))
        torch.set_num_threads(threads)  # the CPUs this actor holds (intra-op parallelism on a CPU node)
        self.ensemble = FoldEnsemble(
            states, EnsembleSettings(model, dropout, resize, crop, precision, tta, norm, calibration)
        )
        self.resize = resize

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = np.stack([decode_image(str(p), self.resize) for p in batch["path"]])  # (B, resize, resize, 3)
        probs = self.ensemble.predict(images)  # (K, B) P(fake)
        out = {"row": batch["row"], "prob_fake": self.ensemble.soft_vote(probs)}
        out.update({f"prob_fold{k}": p for k, p in enumerate(probs)})
        return out


def soft_vote_predict(
    paths: Sequence[str],
    weight_refs: Sequence[ray.ObjectRef],
    *,
    resize: int,
    crop: int,
    dropout: float,
    batch_size: int,
    model: str = DEFAULT_MODEL,
    norm: Normalization = IMAGENET,
    actors: int = 0,
    gpus_per_actor: float = 0,
    precision: str = "auto",
    tta: bool = False,
    actor_restarts: int = 0,
    calibration: Calibration = NONE,
    on_rows: Optional[Callable[[int], None]] = None,
) -> pd.DataFrame:
    """P(fake) of every path by the soft vote of the K folds (the mean of their softmaxes, or `calibration`'s vote);
    columns row, prob_fake, prob_fold{k}.

    Decoding and the models run in `actors` actors (default: one per GPU; without GPUs one per node, holding all
    the CPUs of the smallest node, since the fold tasks are done by then and torch spreads a batch over them). A set
    of at most `SMALL_SET` images with `actors` left at 0 (or 1) is voted by one Ray task with one actor's
    resources instead: starting Ray Data's actor pool costs seconds more than voting so few (a new process that
    imports torch, and the pool's own start), while a task reuses an idle worker of the fold tasks.
    `tta` adds the horizontally flipped images; `on_rows(n)` is called on the driver as n more rows are done.
    """
    one_task = len(paths) <= SMALL_SET and actors <= 1  # before `actors` is worked out below
    cpus_per_actor = 1
    if gpus_per_actor > 0:
        if actors <= 0:
            actors = max(1, int(ray.cluster_resources().get("GPU", 0) // gpus_per_actor))
    else:
        node_cpus = [int(n.get("CPU", 0)) for n in alive_nodes() if n.get("CPU", 0) >= 1] or [1]
        actors = actors if actors > 0 else len(node_cpus)
        # Actors of one CPU each would leave cores idle (one actor per node) or split the blocks unevenly (Ray Data
        # hands every queued block to the first actor that is ready); one actor per node with all its cores does not.
        cpus_per_actor = max(1, min(min(node_cpus), min(node_cpus) * len(node_cpus) // actors))
    frame = pd.DataFrame({"row": np.arange(len(paths)), "path": [str(p) for p in paths]})
    predictor_kwargs = {
        "weight_refs": list(weight_refs),
        "dropout": dropout,
        "model": model,
        "norm": norm,
        "crop": crop,
        "resize": resize,
        "precision": precision,
        "tta": tta,
        "threads": cpus_per_actor,
        "calibration": calibration,
    }
    if one_task:
        return _vote_in_one_task(frame, predictor_kwargs, batch_size, gpus_per_actor, actor_restarts, on_rows)
    # At least two blocks per actor, so every actor gets work (Ray Data hands out whole blocks).
    n_blocks = max(1, min(len(frame), max(2 * actors, -(-len(frame) // batch_size))))
    bounds = np.linspace(0, len(frame), n_blocks + 1).astype(int)
    ds = ray.data.from_pandas([frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a])
    if on_rows is not None:  # the caller shows progress: Ray Data's own bars would print a second display
        ds.context.enable_progress_bars = False
    # By default Ray Data raises a UserCodeException "from" the actor's exception, and that cause is lost on the way
    # to the driver (exceptions pickle without __cause__): a test image that cannot be decoded (a DataError naming
    # it) then reached the user as a bare Ray traceback. The original exception keeps its message.
    ds.context.raise_original_map_exception = True
    # One actor per GPU lands on every GPU of the cluster: Ray Data creates actors with the SPREAD strategy
    # (ray/data/context.py DEFAULT_SCHEDULING_STRATEGY, applied in actor_pool_map_operator.py), and each
    # holds `gpus_per_actor`. The K weight refs reach each node's object store once, like the images.
    # Ray Data restarts a dead actor forever by default, and because its own constructor arguments sit in the
    # object store, Ray then logs an error line per actor (ray-project/ray#53727). With actor_restarts=0 (the
    # default of predict.actor_restarts) a lost actor fails inference instead; the checkpoints stay on disk for
    # `python -m raydf.predict`. Ray 2.60 sets max_restarts only through the deprecated **ray_remote_args
    # (Ray's own comment in ActorPoolMapOperator names it), so that one warning is silenced here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        ds = ds.map_batches(
            SoftVotePredictor,
            batch_size=batch_size,
            fn_constructor_kwargs=predictor_kwargs,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor,
            num_cpus=cpus_per_actor,
            max_restarts=actor_restarts,
        )
    log.info(
        "soft vote of %d models over %d images on %d actor(s) (%d CPU%s each)%s",
        len(weight_refs),
        len(frame),
        actors,
        cpus_per_actor,
        f", {gpus_per_actor:g} GPU" if gpus_per_actor else "",
        " with flip TTA" if tta else "",
    )
    parts = []
    for part in ds.iter_batches(batch_size=None, batch_format="pandas"):  # blocks as they finish: live progress
        parts.append(part)
        if on_rows:
            on_rows(len(part))
    return pd.concat(parts).sort_values("row").reset_index(drop=True)


@ray.remote
def _vote_task(frame: pd.DataFrame, predictor_kwargs: dict, batch_size: int) -> pd.DataFrame:
    """The soft vote of a small set in one task: the actor pool's predictor, batch by batch."""
    predictor = SoftVotePredictor(**predictor_kwargs)
    parts = []
    for start in range(0, len(frame), batch_size):
        batch = frame.iloc[start : start + batch_size]
        parts.append(pd.DataFrame(predictor({"row": batch["row"].to_numpy(), "path": batch["path"].to_numpy()})))
    return pd.concat(parts, ignore_index=True)


def _vote_in_one_task(
    frame: pd.DataFrame,
    predictor_kwargs: dict,
    batch_size: int,
    gpus: float,
    restarts: int,
    on_rows: Optional[Callable[[int], None]],
) -> pd.DataFrame:
    log.info(
        "soft vote of %d models over %d images in one task (%d CPU%s)%s",
        len(predictor_kwargs["weight_refs"]),
        len(frame),
        predictor_kwargs["threads"],
        f", {gpus:g} GPU" if gpus else "",
        " with flip TTA" if predictor_kwargs["tta"] else "",
    )
    # The weight refs travel inside the kwargs (not resolved by Ray): the predictor fetches them, as an actor does.
    task = _vote_task.options(num_cpus=predictor_kwargs["threads"], num_gpus=gpus, max_retries=restarts)  # -1: forever
    out = ray.get(task.remote(frame, predictor_kwargs, batch_size))
    if on_rows:
        on_rows(len(out))
    return out.sort_values("row").reset_index(drop=True)
