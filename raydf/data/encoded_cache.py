"""The encoded-image cache (`data.cache=encoded`): every training image's encoded bytes packed in one file per node.

A decoded 256 px image is 196 KB; the same face as a JPEG is typically 10-20 KB. Keeping the bytes and decoding
each sample when a batch is drawn (in the DataLoader's workers when it has them) holds 10-20x more images in the
same memory, for a decode of about a millisecond per sample.

`data.cache_format`: `original` keeps each file's bytes as they are, so every sample decodes to the very pixels
of the decoded cache (same seed, same weights); `png` re-encodes at `data.resize` losslessly (same pixels; for
sources much larger than `data.resize`); `jpeg` re-encodes at `data.cache_quality` (lossy: pixels differ from the
decoded cache: on real faces at 128 px and quality 95, by 2 grey levels on average, 99% of them within 9; the
log says so).

The file name carries the image list's key (paths, sizes, mtimes), the format and the size, like the decoded cache:
an unchanged set is never packed twice, a changed one is packed again. The data file appears last, by a rename,
so its existence means the pack is complete.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from filelock import FileLock

from raydf import signals
from raydf.data.cache import cache_key
from raydf.data.demo import default_cache_dir
from raydf.data.images import decode_image, file_stamp, read_file
from raydf.data.sources import EncodedImages

log = logging.getLogger(__name__)

FORMATS = ("original", "png", "jpeg")
_CHUNK = 2048  # images read (and re-encoded) in parallel, then appended to the pack in order
_SAMPLE = 256  # images whose encoded size estimates the whole set's (auto's choice)


@dataclass(frozen=True)
class EncodedCache:
    """Where the packed encoded bytes of `paths` live (or will live) on this machine."""

    paths: tuple[str, ...]
    size: int
    folder: str
    format: str = "original"
    quality: int = 95

    @classmethod
    def for_images(
        cls, paths: Sequence[str], size: int, folder: Optional[str] = None, format: str = "original", quality: int = 95
    ) -> EncodedCache:
        return cls(tuple(str(p) for p in paths), size, str(folder or default_cache_dir() / "decoded"), format, quality)

    @functools.cached_property
    def file(self) -> Path:
        kind = "original" if self.format == "original" else f"{self.format}{self.quality}"
        key = cache_key(self.paths, self.size, f"encoded-{kind}-v1")
        return Path(self.folder) / f"encoded-{kind}-{self.size}px-{len(self.paths)}-{key}.bin"

    @property
    def offsets_file(self) -> Path:
        return self.file.with_suffix(".offsets.npy")

    def encode(self, path: str) -> bytes:
        """One image as it is kept: the file's bytes, or its decode at `size` px re-encoded."""
        if self.format == "original":
            return read_file(path)
        bgr = cv2.cvtColor(decode_image(path, self.size), cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, self.quality] if self.format == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
        ok, buf = cv2.imencode(".jpg" if self.format == "jpeg" else ".png", bgr, params)
        if not ok:
            raise ValueError(f"OpenCV could not encode {path} as {self.format}")
        return buf.tobytes()

    def estimated_bytes(self) -> int:
        """The pack's size, from up to 256 images spread over the set (file sizes; re-encodes for png/jpeg)."""
        n = len(self.paths)
        if n == 0:
            return 0
        rows = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE)).astype(int))
        if self.format == "original":
            sizes = [(file_stamp(self.paths[i]) or (0, 0))[0] for i in rows]
        else:
            sizes = []
            for i in rows:
                try:
                    sizes.append(len(self.encode(self.paths[i])))
                except Exception:  # unreadable: the pre-flight names it; it does not count here
                    continue
        return int(np.mean(sizes) * n) + 8 * (n + 1) if sizes else 0

    def load(self, threads: int = 0) -> EncodedImages:
        """The packed images, memory-mapped read-only; packed first if not cached yet.

        A file lock makes concurrent callers on one node (several folds) pack it once between them.
        """
        path = self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                self._pack(threads)
        offsets = np.load(self.offsets_file, mmap_mode="r")
        data = np.memmap(path, dtype=np.uint8, mode="r") if offsets[-1] > 0 else np.zeros(0, np.uint8)
        return EncodedImages(data, offsets, self.size)

    def _pack(self, threads: int) -> None:
        t0 = time.time()
        path, n = self.file, len(self.paths)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp_offsets = path.with_name(path.name + f".{os.getpid()}.offsets.tmp.npy")
        offsets = np.zeros(n + 1, dtype=np.int64)
        pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)
        try:  # the pack streams to a temp file in chunks (never the whole set in memory), then two renames
            with signals.partial_file(str(tmp)), open(tmp, "wb") as f:
                for start in range(0, n, _CHUNK):
                    for i, blob in enumerate(pool.map(self.encode, self.paths[start : start + _CHUNK]), start):
                        f.write(blob)
                        offsets[i + 1] = offsets[i] + len(blob)
                f.flush()
                os.fsync(f.fileno())
                np.save(tmp_offsets, offsets)
                os.replace(tmp_offsets, self.offsets_file)
                os.replace(tmp, path)  # last: the data file's existence means the pack is complete
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            tmp.unlink(missing_ok=True)
            tmp_offsets.unlink(missing_ok=True)
        mean = offsets[-1] / max(n, 1)
        lossy = (
            f"; jpeg quality {self.quality} is lossy: pixels differ slightly from the decoded cache's"
            if self.format == "jpeg"
            else ""
        )
        log.info(
            "packed %d images (%s, %.1f KB each, %.0f MB, %.1fx smaller than decoded at %dpx) in %.1fs into %s%s",
            n,
            self.format,
            mean / 1024,
            offsets[-1] / 2**20,
            self.size * self.size * 3 / max(mean, 1),
            self.size,
            time.time() - t0,
            path,
            lossy,
        )
