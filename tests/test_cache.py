"""The decoded-image cache: same pixels as decoding, rebuilt when the data set changes."""

import os

import cv2
import numpy as np

from raydf.data.cache import DecodedCache
from raydf.data.images import decode_images


def _write_images(folder, n=6, size=140):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.jpg"
        cv2.imwrite(str(p), rng.integers(0, 255, (size, size + 10 * i, 3), dtype=np.uint8))
        paths.append(str(p))
    return paths


def test_cache_returns_the_decoded_pixels_and_is_reused(tmp_path):
    paths = _write_images(tmp_path)
    cache = DecodedCache.for_images(paths, 96, tmp_path / "cache")
    first = cache.load()
    np.testing.assert_array_equal(first, decode_images(paths, 96))
    assert not first.flags.writeable  # memory-mapped read-only: folds cannot corrupt it
    mtime = cache.file.stat().st_mtime_ns
    np.testing.assert_array_equal(DecodedCache.for_images(paths, 96, tmp_path / "cache").load(), first)
    assert cache.file.stat().st_mtime_ns == mtime  # second load decoded nothing


def test_changed_data_set_is_decoded_again(tmp_path):
    paths = _write_images(tmp_path)
    old = DecodedCache.for_images(paths, 96, tmp_path / "cache")
    old.load()
    old_file = old.file
    # Replace one image's content (new bytes, new mtime): the key changes and the cache is rebuilt.
    cv2.imwrite(paths[2], np.zeros((140, 140, 3), np.uint8))
    os.utime(paths[2], ns=(old_file.stat().st_mtime_ns + 10**9,) * 2)
    new = DecodedCache.for_images(paths, 96, tmp_path / "cache")
    assert new.file != old_file
    images = new.load()
    assert images[2].max() == 0 and np.array_equal(images[3], decode_images([paths[3]], 96)[0])
    # A different size or a different list is a different cache too.
    assert DecodedCache.for_images(paths, 80, tmp_path / "cache").file != new.file
    assert DecodedCache.for_images(paths[:-1], 96, tmp_path / "cache").file != new.file


def test_disk_mode_folds_read_the_memory_mapped_file(ray_local, tmp_path):
    from raydf.config import load_config
    from raydf.distributed.data import share_images
    from raydf.distributed.folds import run_folds
    from raydf.distributed.session import fold_resources

    paths = _write_images(tmp_path, n=40, size=96)
    cfg = load_config(None, ["data.resize=80", "data.crop=76", "train.batch_size=14", "train.epochs=1",
                             "resources.gpus_per_fold=0", "data.cache=disk", f"data.cache_dir={tmp_path / 'c'}"])
    handle = share_images(paths, cfg)
    assert isinstance(handle, DecodedCache) and handle.file.exists()
    labels = np.arange(40) % 2
    results = run_folds(handle, ray_local.put(labels), {0: (np.arange(12, 40), np.arange(12))}, cfg,
                        fold_resources(cfg))
    assert results[0][1]["epochs_run"] == 1
