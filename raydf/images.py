"""Decoding: each image is read once with OpenCV, converted to RGB and resized to the pipeline's first size."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import cv2
import numpy as np

from raydf.errors import DataError


def decode_image(path: str, size: int) -> np.ndarray:
    """Read one image as (size, size, 3) uint8 RGB.

    `cv2.IMREAD_COLOR` applies EXIF rotation and turns grey, palette and 16-bit images into 8-bit BGR;
    the seed passed `cv2.COLOR_BGR2RGB` as the read flag, so its images stayed BGR. We convert.
    """
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        reason = "file not found" if not os.path.exists(path) else "not a readable image"
        raise DataError(f"cannot decode {path}: {reason}. Fix or remove it from the data set.")
    h, w = bgr.shape[:2]
    if (h, w) != (size, size):
        # INTER_AREA averages when shrinking (no aliasing); INTER_LINEAR is the better choice when enlarging.
        interp = cv2.INTER_AREA if h > size and w > size else cv2.INTER_LINEAR
        bgr = cv2.resize(bgr, (size, size), interpolation=interp)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_images(paths: Sequence[str], size: int, threads: int = 0) -> np.ndarray:
    """Decode many images in parallel into one (N, size, size, 3) uint8 array (OpenCV releases the GIL)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            out[i] = decode_image(paths[i], size)
        except DataError as e:
            errors.append(f"row {i}: {e}")

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        list(pool.map(work, range(len(paths))))
    if errors:
        shown = "\n  ".join(sorted(errors)[:10])
        raise DataError(f"{len(errors)} of {len(paths)} images cannot be decoded:\n  {shown}")
    return out
