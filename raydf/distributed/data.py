"""Sharing the decoded training images with the fold tasks: object store or memory-mapped cache file."""

from __future__ import annotations

import logging
import time
from typing import Optional, Sequence, Union

import numpy as np
import ray

from raydf.config import Config
from raydf.data.cache import DecodedCache
from raydf.data.images import decode_images

log = logging.getLogger(__name__)

# Keep the decoded set to this share of the object store; past it, fold tasks memory-map the cache file.
OBJECT_STORE_SHARE = 0.3

ImagesHandle = Union[ray.ObjectRef, DecodedCache]


def share_images(paths: Sequence[str], cfg: Config, decoded: Optional[np.ndarray] = None) -> ImagesHandle:
    """Decode (or load from the cache) once on the driver; hand the fold tasks one shared copy per node.

    `memory`: one `ray.put`; Ray copies an object to a node once and every task there maps the same
    read-only buffer (zero-copy numpy). `disk`: the tasks memory-map the cache file on their node (each
    node decodes its own file once, under a file lock), for sets larger than the object store.
    `decoded`: the array of `paths` if the caller has it already (the pre-flight decodes a new run's images).
    """
    mode = cfg.data.cache
    t0 = time.time()
    if mode == "off":
        if decoded is None:
            decoded = decode_images(list(paths), cfg.data.resize, cfg.data.decode_threads)
        handle = ray.put(decoded)
        log.info("decoded %d images in %.1fs (no cache file: data.cache=off)", len(paths), time.time() - t0)
        return handle
    cache = DecodedCache.for_images(paths, cfg.data.resize, cfg.data.cache_dir)
    if mode == "auto":
        store = ray.available_resources().get("object_store_memory", 0)
        mode = "memory" if cache.nbytes <= OBJECT_STORE_SHARE * store else "disk"
    images = cache.load(cfg.data.decode_threads, decoded)
    log.info(
        "training images ready in %.1fs: %d x %dpx (%.0f MB), shared through the %s",
        time.time() - t0,
        len(paths),
        cfg.data.resize,
        cache.nbytes / 2**20,
        "object store" if mode == "memory" else f"memory-mapped cache file {cache.file}",
    )
    return ray.put(np.ascontiguousarray(images)) if mode == "memory" else cache


def resolve_images(images: Union[np.ndarray, DecodedCache]) -> np.ndarray:
    """In a fold task: the array itself (object store) or the node's memory-mapped cache file."""
    return images.load() if isinstance(images, DecodedCache) else images
