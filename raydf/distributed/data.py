"""Sharing the training images with the fold tasks: how they are held (`data.cache`) and where.

`memory`: the decoded array, one `ray.put`; Ray copies an object to a node once and every task there maps the
same read-only buffer (zero-copy numpy). `disk`: the tasks memory-map the decoded cache file on their node (each
node decodes its own file once, under a file lock). `encoded`: the encoded bytes, in the object store when they fit
there, else a packed file per node; decoded per sample. `stream`: the paths; each sample is read from its file.
`auto` picks from the set's size and the nodes' memory, object store and disk (`raydf.data.cache_policy`).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import ray

from raydf.config import Config
from raydf.data.cache import DecodedCache
from raydf.data.cache_policy import OBJECT_STORE_SHARE, CachePlan, NodeCapacity, choose_cache
from raydf.data.encoded_cache import EncodedCache
from raydf.data.images import decode_images
from raydf.data.sources import EncodedImages, StreamedImages

log = logging.getLogger(__name__)

ImagesHandle = Union[ray.ObjectRef, DecodedCache, EncodedCache]
Images = Union[np.ndarray, EncodedImages, StreamedImages]  # what a fold task indexes by row


def _free_disk(folder: str) -> float:
    path = Path(folder).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return float(shutil.disk_usage(path).free)


def node_capacities(folder: str) -> list[NodeCapacity]:
    """Memory and object store of every alive node that can run a fold (has CPUs); the free disk of `folder`.

    Ray reports no disk per node: the cache folder's free space here stands for every node's (nodes of one
    cluster are usually alike; set data.cache explicitly when they are not).
    """
    disk = _free_disk(folder)
    nodes = []
    for node in ray.nodes():
        res = node.get("Resources", {})
        if node.get("Alive") and res.get("CPU", 0) > 0:
            store = float(res.get("object_store_memory", 0))
            nodes.append(NodeCapacity(memory=float(res.get("memory", 0)) + store, object_store=store, disk_free=disk))
    return nodes


def _encoded_cache(paths: Sequence[str], cfg: Config) -> EncodedCache:
    d = cfg.data
    return EncodedCache.for_images(paths, d.resize, d.cache_dir, d.cache_format, d.cache_quality)


def plan_cache(paths: Sequence[str], cfg: Config) -> CachePlan:
    """How the training images will be held: `data.cache` as set, or what `auto` picks (logged with why)."""
    mode = cfg.data.cache
    if mode == "encoded":  # in the object store when the bytes fit there, as auto would place them
        cache = _encoded_cache(paths, cfg)
        estimate, store = cache.estimated_bytes(), min(n.object_store for n in node_capacities(cache.folder))
        fits = estimate <= OBJECT_STORE_SHARE * store
        where = "in the object store" if fits else "as a packed file per node"
        return CachePlan(
            mode,
            fits,
            f"data.cache=encoded: ~{estimate / 1e6:.1f} MB {'fit' if fits else 'do not fit'} in "
            f"{OBJECT_STORE_SHARE:.0%} of the smallest node's object store ({store / 1e9:.1f} GB): held {where}",
        )
    if mode != "auto":
        return CachePlan(mode, mode == "memory", f"data.cache={mode}")
    cache = _encoded_cache(paths, cfg)
    plan = choose_cache(len(paths), cfg.data.resize, cache.estimated_bytes(), node_capacities(cache.folder))
    log.info("data.cache=auto chose %s: %s", plan.mode, plan.reason)
    return plan


def share_images(
    paths: Sequence[str], cfg: Config, decoded: Optional[np.ndarray] = None, plan: Optional[CachePlan] = None
) -> ImagesHandle:
    """Make the training images ready once on the driver; hand the fold tasks one shared copy per node.

    `decoded`: the array of `paths` if the caller has it already (the pre-flight decodes a new run's images).
    `plan`: `plan_cache`'s choice, when the caller made it already (before the pre-flight).
    """
    plan = plan or plan_cache(paths, cfg)
    mode, d = plan.mode, cfg.data
    t0 = time.time()
    if mode == "off":
        if decoded is None:
            decoded = decode_images(list(paths), d.resize, d.decode_threads)
        handle = ray.put(decoded)
        log.info("decoded %d images in %.1fs (no cache file: data.cache=off)", len(paths), time.time() - t0)
        return handle
    if mode == "stream":
        log.info("training images streamed: each sample is read from its file every epoch (data.cache=stream)")
        return ray.put(StreamedImages(paths, d.resize))
    if mode == "encoded":
        cache = _encoded_cache(paths, cfg)
        images = cache.load(d.decode_threads)
        where = "object store" if plan.in_object_store else f"packed file {cache.file} (one per node)"
        log.info(
            "training images ready in %.1fs: %d encoded (%s, %.0f MB, %.1f KB each), shared through the %s",
            time.time() - t0,
            len(paths),
            d.cache_format,
            images.nbytes / 2**20,
            images.nbytes / max(len(paths), 1) / 1024,
            where,
        )
        if not plan.in_object_store:
            return cache
        return ray.put(EncodedImages(np.asarray(images.data), np.asarray(images.offsets), images.size))
    cache = DecodedCache.for_images(paths, d.resize, d.cache_dir)
    images = cache.load(d.decode_threads, decoded)
    log.info(
        "training images ready in %.1fs: %d x %dpx (%.0f MB), shared through the %s",
        time.time() - t0,
        len(paths),
        d.resize,
        cache.nbytes / 2**20,
        "object store" if mode == "memory" else f"memory-mapped cache file {cache.file}",
    )
    return ray.put(np.ascontiguousarray(images)) if mode == "memory" else cache


def resolve_images(images: Union[Images, DecodedCache, EncodedCache]) -> Images:
    """In a fold task: the images themselves (object store) or the node's memory-mapped cache file."""
    return images.load() if isinstance(images, (DecodedCache, EncodedCache)) else images


def local_images(
    paths: Sequence[str], cfg: Config, plan: CachePlan, decoded: Optional[np.ndarray] = None
) -> Union[np.ndarray, EncodedImages, StreamedImages]:
    """The training images held in this process as `plan` says, for a sweep (Tune puts them in the object store
    once, for every trial): the decoded array (from its cache file, decoded when missing), the encoded pack, or
    the paths."""
    d = cfg.data
    if plan.mode == "stream":
        return StreamedImages(paths, d.resize)
    if plan.mode == "encoded":
        packed = _encoded_cache(paths, cfg).load(d.decode_threads)
        return EncodedImages(np.asarray(packed.data), np.asarray(packed.offsets), packed.size)
    if plan.mode == "off":
        return decoded if decoded is not None else decode_images(list(paths), d.resize, d.decode_threads)
    return np.ascontiguousarray(DecodedCache.for_images(paths, d.resize, d.cache_dir).load(d.decode_threads, decoded))
