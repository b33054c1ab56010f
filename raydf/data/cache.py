"""The decoded-image cache: every image decoded and resized once, kept as a memory-mappable .npy file.

The file name carries a key made of the image list, each file's size and modification time, and the
decoded size, so a changed data set (an image added, replaced or touched) is decoded again, and an
unchanged one is never decoded twice, across runs, folds and epochs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from filelock import FileLock

from raydf import signals
from raydf.data.demo import default_cache_dir
from raydf.data.images import decode_images, file_stamp, keep_scratch

log = logging.getLogger(__name__)


def cache_key(paths: Sequence[str], size: int, kind: str = "decoded-v1") -> str:
    """A digest of (what is cached, its size, every path with its byte size and mtime)."""
    h = hashlib.sha256(f"raydf-{kind} {size}\n".encode())
    for p in paths:
        stamp = file_stamp(p)
        h.update(f"{p}\0{stamp[0]}\0{stamp[1]}\n".encode() if stamp else f"{p}\0missing\n".encode())
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class DecodedCache:
    """Where the decoded array of `paths` at `size` px lives (or will live) on this machine."""

    paths: tuple[str, ...]
    size: int
    folder: str

    @classmethod
    def for_images(cls, paths: Sequence[str], size: int, folder: Optional[str] = None) -> DecodedCache:
        return cls(tuple(str(p) for p in paths), size, str(folder or default_cache_dir() / "decoded"))

    @functools.cached_property  # stats every file: once per handle
    def file(self) -> Path:
        return Path(self.folder) / f"decoded-{self.size}px-{len(self.paths)}-{cache_key(self.paths, self.size)}.npy"

    @property
    def nbytes(self) -> int:
        return len(self.paths) * self.size * self.size * 3

    def load(self, threads: int = 0, decoded: Optional[np.ndarray] = None) -> np.ndarray:
        """The (N, size, size, 3) uint8 array, memory-mapped read-only; decoded first if not cached yet
        (or taken from `decoded`, when the caller has just decoded these very paths).

        A file lock makes concurrent callers on one node (several folds) decode it once between them.
        """
        path = self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                t0 = time.time()
                images = decoded if decoded is not None else decode_images(self.paths, self.size, threads)
                tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
                try:  # a complete temp file, then a rename: never half a cache file, even when interrupted
                    with signals.partial_file(str(tmp)):
                        kept = keep_scratch(images, str(tmp))  # the pre-flight's decoded scratch file, named
                        if not kept:
                            with open(tmp, "wb") as f:
                                np.save(f, images)
                                f.flush()
                                os.fsync(f.fileno())
                        os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
                how = "the pre-flight's decoded file kept" if kept else "decoded" if decoded is None else "written"
                log.info(
                    "%d images at %dpx cached in %.1fs (%s): %s", len(images), self.size, time.time() - t0, how, path
                )
        return np.load(path, mmap_mode="r")
