"""Face extraction over the cluster: a Ray Data actor pool, each actor holding one MTCNN.

A source (one photo or video) is the unit of work: an actor reads its frames, detects, crops, writes the crops
and the source's part file to the faces folder (shared storage on a cluster, like the images), and hands back
its counts. Sources already done (their part file exists) are not sent again, which is what makes a killed
extraction resumable.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Optional

import numpy as np
import pandas as pd
import ray
import torch

from raydf.data.face_store import FaceStore
from raydf.data.faces import FaceExtractor, FaceSettings
from raydf.distributed.cluster import alive_nodes

log = logging.getLogger(__name__)

PART_FIELDS = ("key", "n_faces", "reason", "frames_used", "frames_grabbed", "seconds", "node", "device")


class FaceExtractActor:
    """Callable class for `map_batches`: MTCNN loaded once per actor; each batch row is one source."""

    def __init__(self, settings: dict, faces_dir: str, batch_size: int, threads: int):
        torch.set_num_threads(threads)
        self.store = FaceStore(faces_dir)
        self.extractor = FaceExtractor(FaceSettings(**settings), batch_size=batch_size)
        self.node = ray.get_runtime_context().get_node_id()
        # Where MTCNN runs: "cuda" when torch sees the GPU Ray granted, "cpu (granted GPU ...)" when it does not
        # (no CUDA build or driver there): the driver warns about the latter.
        gpus = ray.get_gpu_ids()
        self.device = self.extractor.device
        if gpus and self.device == "cpu":
            self.device = f"cpu (granted GPU {','.join(map(str, gpus))})"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {f: [] for f in PART_FIELDS}
        rows = zip(batch["key"], batch["path"], batch["source"], batch["label"], batch["group"])
        for key, path, source, label, group in rows:
            result = self.extractor.extract(str(path))
            label = None if label < 0 else int(label)
            part = self.store.write_source(str(key), str(source), label, str(group), result)
            out["key"].append(key)
            out["n_faces"].append(len(part["rows"]))
            out["reason"].append(part["reason"] or "")
            out["frames_used"].append(part["frames_used"])
            out["frames_grabbed"].append(part["frames_grabbed"])
            out["seconds"].append(part["seconds"])
            out["node"].append(self.node)
            out["device"].append(self.device)
        return {k: np.asarray(v) for k, v in out.items()}


def extract_on_cluster(
    todo: pd.DataFrame,
    store: FaceStore,
    settings: FaceSettings,
    *,
    batch_size: int,
    actors: int = 0,
    gpus_per_actor: float = 0,
    on_source: Optional[Callable[[dict], None]] = None,
) -> pd.DataFrame:
    """Extract the sources of `todo` (columns key, path, source, label (-1: unknown), group); one row per source back
    (PART_FIELDS). `on_source(row)` is called on the driver as each source finishes (progress)."""
    if todo.empty:
        return pd.DataFrame(columns=list(PART_FIELDS))
    cpus_per_actor = 1
    if gpus_per_actor > 0:
        actors = actors or max(1, int(ray.cluster_resources().get("GPU", 0) // gpus_per_actor))
    else:
        # One single-threaded actor per CPU: decoding a video and MTCNN's small convolutions use one core well,
        # and many sources side by side use them all.
        actors = actors or max(1, sum(int(n.get("CPU", 0)) for n in alive_nodes()))
    actors = min(actors, len(todo))
    # One source per block: Ray Data hands out whole blocks, and a video costs 10-100x a photo.
    ds = ray.data.from_pandas([todo.iloc[[i]] for i in range(len(todo))])
    ds.context.enable_progress_bars = False  # the caller shows its own progress
    ds.context.raise_original_map_exception = True  # keep the worker's own error message (see inference.py)
    # Start handing out sources once every actor is up (they fit: `actors` comes from the CPUs/GPUs alive now).
    # Otherwise the first actor to load MTCNN takes the queue while the others start, and a cluster's other
    # nodes get little or nothing.
    ds.context.wait_for_min_actors_s = 600
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        ds = ds.map_batches(
            FaceExtractActor,
            batch_size=1,
            fn_constructor_kwargs={
                "settings": settings.to_dict(),
                "faces_dir": str(store.root),
                "batch_size": batch_size,
                "threads": cpus_per_actor,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor,
            num_cpus=cpus_per_actor,
            max_restarts=0,
        )
    log.info(
        "extracting faces from %d source(s) on %d actor(s)%s",
        len(todo),
        actors,
        f" with {gpus_per_actor:g} GPU each" if gpus_per_actor else "",
    )
    parts = []
    for part in ds.iter_batches(batch_size=None, batch_format="pandas"):
        parts.append(part)
        if on_source:
            for row in part.to_dict("records"):
                on_source(row)
    return pd.concat(parts, ignore_index=True)
