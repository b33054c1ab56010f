"""`data.cache=auto`: the fastest way to hold the training images that fits every node, and why.

From fastest to leanest (per training image at `data.resize` = 256 px):
  memory   decoded, in the object store: 196 KB in shared memory per node;
  disk     decoded, a memory-mapped file per node: 196 KB on disk, read through the page cache;
  encoded  the encoded bytes (object store, else a packed file per node): the files' size (~10-20 KB for a
           JPEG face), plus a decode of ~1 ms per sample in the DataLoader;
  stream   nothing held: each sample read from its file (shared storage or s3://) every epoch.
Every node that trains a fold holds its own copy, so the smallest node decides. Core module: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

OBJECT_STORE_SHARE = 0.3  # of a node's object store: room is left for weights, results and Ray Data
MEMORY_SHARE = 0.5  # of a node's RAM for a memory-mapped file: the page cache must keep it, or epochs read the disk
DISK_SHARE = 0.5  # of the cache folder's free disk


@dataclass(frozen=True)
class NodeCapacity:
    """What one node offers the image cache, in bytes."""

    memory: float  # RAM (Ray's `memory` resource plus its object store: the machine's usable memory)
    object_store: float
    disk_free: float  # free space in the cache folder


@dataclass(frozen=True)
class CachePlan:
    mode: str  # memory | disk | encoded | stream | off
    in_object_store: bool  # memory, and encoded when the pack fits there; else a file per node (or the files)
    reason: str


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def choose_cache(n_images: int, size: int, encoded_bytes: float, nodes: Sequence[NodeCapacity]) -> CachePlan:
    """The first of memory, disk, encoded, stream whose copy fits the smallest node, with the numbers that decided."""
    if not nodes:
        raise ValueError("no node to plan the image cache for")
    store = min(n.object_store for n in nodes)
    ram = min(n.memory for n in nodes)
    disk = min(n.disk_free for n in nodes)
    decoded = float(n_images) * size * size * 3
    room = f"smallest node: {_gb(store)} object store, {_gb(ram)} memory, {_gb(disk)} free disk in the cache folder" + (
        f", of {len(nodes)} nodes" if len(nodes) > 1 else ""
    )
    sizes = f"{n_images} images: {_gb(decoded)} decoded at {size}px, ~{_gb(encoded_bytes)} encoded"
    if decoded <= OBJECT_STORE_SHARE * store:
        fits = f"decoded fits in {OBJECT_STORE_SHARE:.0%} of the object store"
        return CachePlan("memory", True, f"{sizes}; {fits} ({room})")
    if decoded <= MEMORY_SHARE * ram and decoded <= DISK_SHARE * disk:
        return CachePlan(
            "disk",
            False,
            f"{sizes}; decoded exceeds {OBJECT_STORE_SHARE:.0%} of the object store but fits in {MEMORY_SHARE:.0%} "
            f"of memory and {DISK_SHARE:.0%} of the free disk as a memory-mapped file ({room})",
        )
    if encoded_bytes <= OBJECT_STORE_SHARE * store:
        return CachePlan(
            "encoded",
            True,
            f"{sizes}; decoded fits neither the object store nor {MEMORY_SHARE:.0%} of memory; the encoded bytes fit "
            f"in {OBJECT_STORE_SHARE:.0%} of the object store ({room})",
        )
    if encoded_bytes <= MEMORY_SHARE * ram and encoded_bytes <= DISK_SHARE * disk:
        return CachePlan(
            "encoded",
            False,
            f"{sizes}; decoded does not fit; the encoded bytes fit as a packed file per node ({room})",
        )
    return CachePlan(
        "stream", False, f"{sizes}; not even the encoded bytes fit a node: every sample is read from its file ({room})"
    )
