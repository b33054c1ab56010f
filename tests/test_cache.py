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
    cfg = load_config(
        None,
        [
            "data.resize=80",
            "data.crop=76",
            "train.batch_size=14",
            "train.epochs=1",
            "resources.gpus_per_fold=0",
            "data.cache=disk",
            f"data.cache_dir={tmp_path / 'c'}",
        ],
    )
    handle = share_images(paths, cfg)
    assert isinstance(handle, DecodedCache) and handle.file.exists()
    labels = np.arange(40) % 2
    results = run_folds(
        handle, ray_local.put(labels), {0: (np.arange(12, 40), np.arange(12))}, cfg, fold_resources(cfg)
    )
    assert results[0][1]["epochs_run"] == 1


def _train_run(run_dir, demo, mode, cache_dir):
    """A tiny training run (2 folds x 1 epoch, no test set) with `data.cache=mode`."""
    from conftest import tiny_overrides

    from raydf.config import load_config
    from raydf.pipelines.training import train

    cfg = load_config(
        None, tiny_overrides(run_dir, demo) + [f"data.cache={mode}", f"data.cache_dir={cache_dir}", "data.test=null"]
    )
    train(cfg)
    return cfg


def _assert_folds_saw_the_decoded_pixels(run_dir, cfg):
    """Every out-of-fold probability, recomputed from the fold's checkpoint on a fresh decode of the image, is the
    one the fold wrote: each fold validated (and trained) on exactly the pixels of the files."""
    import pandas as pd
    import torch

    from raydf.data.images import center_crop
    from raydf.models.factory import build_model
    from raydf.training.engine import Precision, to_input

    oof = pd.read_csv(run_dir / "oof.csv")
    images = center_crop(decode_images(oof["path"].tolist(), cfg.data.resize), cfg.data.crop)
    cpu = torch.device("cpu")
    precision = Precision.resolve(cfg.train.precision, cpu)
    for k in range(cfg.train.folds):
        rows = (oof["fold"] == k).to_numpy()
        model = build_model(cfg.model.dropout, cfg.model.name)
        model.load_state_dict(torch.load(run_dir / "checkpoints" / f"fold{k}.pt", weights_only=True)["state_dict"])
        model = model.to(memory_format=torch.channels_last).eval()
        with torch.no_grad(), precision.autocast(cpu):
            x = to_input(torch.from_numpy(np.ascontiguousarray(images[rows])), cpu)
            prob = torch.softmax(model(x).float(), 1)[:, 1].numpy()
        np.testing.assert_allclose(oof.loc[rows, "prob_fake"], prob, atol=1e-5 if precision.dtype is None else 2e-3)


def test_disk_cache_through_a_run_and_a_resume_that_decodes_nothing(ray_local, tiny_demo, tmp_path, monkeypatch):
    """data.cache=disk: the folds read the memory-mapped file, and a resumed run takes every image from it."""
    import raydf.data.cache
    import raydf.data.preflight
    import raydf.distributed.data
    from raydf.pipelines.training import train
    from raydf.runs.resume import resume_config

    run_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    cfg = _train_run(run_dir, tiny_demo, "disk", cache_dir)
    files = list(cache_dir.glob("*.npy"))
    assert len(files) == 1
    _assert_folds_saw_the_decoded_pixels(run_dir, cfg)

    # Fold 1 lost (no checkpoint, no saved epoch): the resume trains it again, from the cache alone. The driver's
    # decoders are counted here; a fold task that decoded would rewrite the cache file, and its mtime tells.
    mtime = files[0].stat().st_mtime_ns
    for lost in [run_dir / "checkpoints/fold1.pt", *run_dir.glob("state/fold1*.pt")]:
        lost.unlink()
    decoded = []

    def counting(decode):
        def wrapper(paths, *args, **kwargs):
            decoded.append(len(paths))
            return decode(paths, *args, **kwargs)

        return wrapper

    for module, name in (
        (raydf.data.cache, "decode_images"),
        (raydf.distributed.data, "decode_images"),
        (raydf.data.preflight, "decode_checked"),
    ):
        monkeypatch.setattr(module, name, counting(getattr(module, name)))
    train(resume_config(str(run_dir)))
    assert decoded == []
    assert list(cache_dir.glob("*.npy")) == files and files[0].stat().st_mtime_ns == mtime
    _assert_folds_saw_the_decoded_pixels(run_dir, cfg)


def test_no_cache_file_with_cache_off(ray_local, tiny_demo, tmp_path):
    """data.cache=off: the folds train on the pre-flight's decode, and nothing is written to the cache folder."""
    cache_dir = tmp_path / "cache"
    cfg = _train_run(tmp_path / "run", tiny_demo, "off", cache_dir)
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
    _assert_folds_saw_the_decoded_pixels(tmp_path / "run", cfg)
