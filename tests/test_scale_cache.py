"""Holding the training images at scale (issue: millions of face crops): the encoded and streamed caches give the
decoded cache's pixels and weights, `data.cache=auto` picks by size, the pre-flight is cached and spreads over a
cluster's nodes."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from raydf.config import load_config
from raydf.data.cache_policy import NodeCapacity, choose_cache
from raydf.data.encoded_cache import EncodedCache
from raydf.data.images import decode_images
from raydf.data.sources import EncodedImages, StreamedImages
from raydf.training.fold_loop import train_fold

GB = 1e9


def _faces(folder, n=24):
    """JPEG and PNG files of several sizes (some resized on decode), fakes (odd rows) with a bright square."""
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(n):
        size = (96, 120, 64)[i % 3]
        img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        if i % 2:
            img[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 230
        p = folder / f"img{i}.{'png' if i % 4 == 0 else 'jpg'}"
        cv2.imwrite(str(p), img)
        paths.append(str(p))
        labels.append(i % 2)
    return paths, np.array(labels)


def test_encoded_and_streamed_images_are_the_decoded_pixels(tmp_path):
    paths, _ = _faces(tmp_path)
    decoded = decode_images(paths, 80)
    for fmt in ("original", "png"):
        packed = EncodedCache.for_images(paths, 80, tmp_path / "c", fmt).load()
        assert len(packed) == len(paths)
        assert all(np.array_equal(packed[i], decoded[i]) for i in range(len(paths))), fmt
    assert all(np.array_equal(StreamedImages(paths, 80)[i], decoded[i]) for i in range(len(paths)))
    uris = StreamedImages([f"file://{p}" for p in paths], 80)  # the URI path (s3://, gs://) through pyarrow
    assert all(np.array_equal(uris[i], decoded[i]) for i in range(len(paths)))


def test_a_jpeg_reencode_differs_from_the_decoded_pixels_by_what_the_docs_state(shared_data, tmp_path):
    """data.cache_format=jpeg (quality 95) on real faces: about 2 grey levels on average, 99% within 12."""
    paths = sorted(str(p) for p in shared_data.glob("*/*.jpg"))[::100]
    decoded = decode_images(paths, 128).astype(int)
    jpeg = EncodedCache.for_images(paths, 128, tmp_path / "c", "jpeg", 95).load()
    diff = np.abs(np.stack([jpeg[i] for i in range(len(paths))]).astype(int) - decoded)
    assert 0 < diff.mean() < 2.5 and np.percentile(diff, 99) <= 12, (diff.mean(), np.percentile(diff, 99))
    assert jpeg.nbytes < len(paths) * 128 * 128 * 3 / 4  # over 4x smaller than decoded, even at 128 px


def test_the_pack_is_reused_and_repacked_when_a_file_changes(tmp_path):
    paths, _ = _faces(tmp_path, n=6)
    cache = EncodedCache.for_images(paths, 80, tmp_path / "c")
    cache.load()
    mtime = cache.file.stat().st_mtime_ns
    assert EncodedCache.for_images(paths, 80, tmp_path / "c").load()[0].shape == (80, 80, 3)
    assert cache.file.stat().st_mtime_ns == mtime  # packed once
    cv2.imwrite(paths[1], np.zeros((96, 96, 3), np.uint8))
    again = EncodedCache.for_images(paths, 80, tmp_path / "c")
    assert again.file != cache.file and again.load()[1].max() == 0
    assert not list((tmp_path / "c").glob("*.tmp*"))  # nothing half-written left


def _fold_cfg():
    return load_config(
        None,
        [
            "data.resize=80",
            "data.crop=76",
            "train.batch_size=8",
            "train.epochs=1",
            "optim.lr=0.01",
            "model.name=test_efficientnet",
            "train.precision=fp32",
        ],
    )


@pytest.mark.parametrize("loader_workers", [2])
def test_each_mode_that_keeps_the_files_bytes_trains_a_fold_to_the_decoded_caches_weights(tmp_path, loader_workers):
    """Same seed, same pixels in: the same weights out, bit for bit, whether the images are held decoded, as their
    files' bytes, re-encoded as PNG or read from the files each epoch (with the DataLoader's workers decoding)."""
    paths, labels = _faces(tmp_path)
    cfg = _fold_cfg()
    cfg.resources.loader_workers = loader_workers
    sources = {
        "decoded": decode_images(paths, 80),
        "encoded": EncodedCache.for_images(paths, 80, tmp_path / "c").load(),
        "stream": StreamedImages(paths, 80),
    }
    tr, va = np.arange(8, 24), np.arange(8)
    weights = {name: train_fold(images, labels, tr, va, cfg, 0).weights for name, images in sources.items()}
    reference = weights.pop("decoded")
    for name, w in weights.items():
        assert w.keys() == reference.keys()
        assert all(np.array_equal(w[k], reference[k]) for k in w), name
    # The check can fail: a few changed pixels in one training image change the weights.
    changed = sources["decoded"].copy()
    changed[10, 38:42, 38:42] = 255
    other = train_fold(changed, labels, tr, va, cfg, 0).weights
    assert not all(np.array_equal(other[k], reference[k]) for k in other)


def test_encoded_images_cross_a_pickle_as_buffers_not_objects():
    """The object store (and a DataLoader worker) gets two numpy buffers, whatever the number of images."""
    import pickle

    images = EncodedImages(np.arange(1000, dtype=np.uint8), np.array([0, 400, 1000]), 32)
    buffers = []
    pickle.dumps(images, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2
    assert sum(b.raw().nbytes for b in buffers) == images.nbytes


def _node(memory, store, disk):
    return NodeCapacity(memory=memory * GB, object_store=store * GB, disk_free=disk * GB)


@pytest.mark.parametrize(
    "n, node, mode, in_store",
    [
        (10_000, _node(24, 7, 100), "memory", True),  # 2.0 GB decoded at 256 px: in 30% of a 7 GB store
        (50_000, _node(24, 7, 100), "disk", False),  # 9.8 GB: not the store, but half the memory
        (50_000, _node(24, 7, 15), "encoded", True),  # the same on a small disk: the 0.6 GB of bytes in the store
        (200_000, _node(24, 7, 100), "encoded", False),  # 39 GB decoded; 2.4 GB encoded: a packed file per node
        (200_000, _node(64, 19, 500), "encoded", True),  # a larger node holds the bytes in its object store
        (3_200_000, _node(24, 7, 100), "stream", False),  # 39 GB even encoded: read from the files
        (3_200_000, _node(256, 80, 2000), "encoded", False),  # a big node packs them
    ],
)
def test_auto_picks_the_fastest_mode_that_fits(n, node, mode, in_store):
    plan = choose_cache(n, 256, n * 12_000, [node])
    assert (plan.mode, plan.in_object_store) == (mode, in_store), plan.reason
    assert f"{n} images" in plan.reason


def test_auto_plans_for_the_smallest_node():
    big, small = _node(256, 80, 2000), _node(24, 7, 100)
    assert choose_cache(100_000, 256, 100_000 * 12_000, [big]).mode == "memory"
    plan = choose_cache(100_000, 256, 100_000 * 12_000, [big, small, big])
    assert plan.mode == "encoded" and "of 3 nodes" in plan.reason


def test_auto_reads_the_nodes_from_ray(ray_local, tmp_path):
    from raydf.distributed.data import node_capacities, plan_cache

    (node,) = node_capacities(str(tmp_path / "not-yet"))
    assert node.object_store == pytest.approx(300 * 1024**2, rel=0.05)  # the ray_local fixture's
    assert node.memory > node.object_store and node.disk_free > 0
    paths, _ = _faces(tmp_path, n=4)
    cfg = load_config(None, ["data.resize=80", f"data.cache_dir={tmp_path / 'c'}"])
    assert plan_cache(paths, cfg).mode == "memory"  # 77 KB decoded


def _train_run(run_dir, demo, mode, cache_dir, *extra):
    from conftest import tiny_overrides

    from raydf.pipelines.training import train

    cfg = load_config(
        None,
        tiny_overrides(run_dir, demo) + [f"data.cache={mode}", f"data.cache_dir={cache_dir}", "data.test=null", *extra],
    )
    train(cfg)
    return cfg


@pytest.mark.parametrize("mode", ["encoded", "stream"])
def test_a_run_trains_on_encoded_or_streamed_images_and_its_folds_saw_the_files_pixels(
    ray_local, tiny_demo, tmp_path, mode, monkeypatch
):
    from test_cache import _assert_folds_saw_the_decoded_pixels

    import raydf.data.preflight

    cache_dir = tmp_path / "cache"
    cfg = _train_run(tmp_path / "run", tiny_demo, mode, cache_dir, "train.precision=fp32")
    _assert_folds_saw_the_decoded_pixels(tmp_path / "run", cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    plan = summary["data_cache"]
    assert plan["mode"] == mode and plan["in_object_store"] == (mode == "encoded")  # 64 small JPEGs fit the store
    assert plan["reason"].startswith(f"data.cache={mode}")
    assert all(f["peak_rss_mb"] > 100 for f in summary["folds"]) and summary["timings"]["driver_peak_rss_mb"] > 100
    assert not list(cache_dir.glob("decoded-*.npy"))  # nothing held decoded
    assert len(list(cache_dir.glob("encoded-*.bin"))) == (mode == "encoded")
    assert len(list(cache_dir.glob("preflight-*.npz"))) == 1

    if mode == "stream":
        return
    # A second run on the same files: the pre-flight's findings come from its cache; no file is read to check it.
    checked = []
    real = raydf.data.preflight.check_images
    monkeypatch.setattr(raydf.data.preflight, "check_images", lambda paths, **kw: checked.append(paths) or real(paths))
    _train_run(tmp_path / "run2", tiny_demo, mode, cache_dir)
    assert checked == []
    assert (tmp_path / "run2" / "bad_inputs.csv").read_text() == (tmp_path / "run" / "bad_inputs.csv").read_text()


def test_the_preflight_cache_keeps_bad_files_and_a_touched_file_is_checked_again(tmp_path):
    import pandas as pd

    from raydf.data.preflight import preflight

    paths, labels = _faces(tmp_path, n=8)
    (tmp_path / "img3.jpg").write_bytes(b"not an image")
    train = pd.DataFrame({"path": paths, "label": labels})
    first = preflight(train, None, 64, decode=False, cache_folder=str(tmp_path / "c"))
    assert first.bad["path"].tolist() == [paths[3]] and first.images is None
    again = preflight(train, None, 64, decode=False, cache_folder=str(tmp_path / "c"))
    assert again.bad.equals(first.bad) and again.content == first.content and again.train.equals(first.train)
    cv2.imwrite(paths[3], np.zeros((64, 64, 3), np.uint8))  # fixed: a new mtime, a new check
    assert preflight(train, None, 64, decode=False, cache_folder=str(tmp_path / "c")).bad.empty


def test_disk_mode_decodes_into_a_scratch_file_not_memory_and_leaves_nothing_behind(tmp_path):
    import pandas as pd

    from raydf.data.preflight import preflight

    paths, labels = _faces(tmp_path, n=8)
    train = pd.DataFrame({"path": paths, "label": labels})
    inputs = preflight(train, None, 64, cache_folder=str(tmp_path / "c"), decode_to_disk=True)
    assert isinstance(inputs.images, np.memmap)  # file-backed pages, not the process's heap
    np.testing.assert_array_equal(inputs.images, decode_images(paths, 64))
    assert not list((tmp_path / "c").glob(".decoding-*"))  # unlinked at once: nothing left, however it ends


def test_the_decoded_cache_file_is_the_scratch_file_named_not_a_second_copy(tmp_path, monkeypatch):
    import pandas as pd

    from raydf.data.cache import DecodedCache
    from raydf.data.preflight import preflight

    paths, labels = _faces(tmp_path, n=8)
    folder = str(tmp_path / "c")
    inputs = preflight(
        pd.DataFrame({"path": paths, "label": labels}), None, 64, cache_folder=folder, decode_to_disk=True
    )
    saved = []
    monkeypatch.setattr(np, "save", lambda *a, **k: saved.append(a))  # a copy would go through np.save
    cached = DecodedCache.for_images(paths, 64, folder).load(decoded=inputs.images)
    assert not saved
    np.testing.assert_array_equal(cached, decode_images(paths, 64))
    assert [p.name for p in (tmp_path / "c").glob("decoded-*.npy")] == [
        DecodedCache.for_images(paths, 64, folder).file.name
    ]
    inputs.images[0] = 0  # the pre-flight's array is that file now: its writes land there
    del inputs
    assert not np.load(DecodedCache.for_images(paths, 64, folder).file).any(axis=(1, 2, 3))[0]

    # With a bad row the pre-flight compacts its array (a slice): that is copied, and the copy is right.
    (tmp_path / "img2.jpg").write_bytes(b"not an image")
    monkeypatch.undo()
    again = preflight(
        pd.DataFrame({"path": paths, "label": labels}), None, 64, cache_folder=folder, decode_to_disk=True
    )
    good = [p for i, p in enumerate(paths) if i != 2]
    np.testing.assert_array_equal(
        DecodedCache.for_images(good, 64, folder).load(decoded=again.images), decode_images(good, 64)
    )


SPREAD_SCRIPT = """
import json, sys
import ray
from raydf.data.images import check_images
from raydf.distributed.preflight import SpreadCheck, preflight_check
paths = json.loads(sys.argv[2])
ray.init(address=sys.argv[1], log_to_driver=False)
spread = preflight_check(len(paths), 0)
assert isinstance(spread, SpreadCheck), spread
spread.chunk = 3
reasons, hashes = spread(paths)
local = check_images(paths)
print(json.dumps({"same": [reasons, hashes] == [local[0], local[1]], "bad": sorted(reasons),
                  "nodes": len(spread.rows_per_node), "rows": sum(spread.rows_per_node.values())}))
"""


@pytest.mark.slow
def test_the_spread_preflight_finds_the_local_ones_bad_files_on_three_nodes(tmp_path):
    from ray_processes import HelperCluster, child_env

    paths, _ = _faces(tmp_path, n=30)
    (tmp_path / "img5.jpg").write_bytes(b"<html>Not found</html>")
    data = (tmp_path / "img9.jpg").read_bytes()
    (tmp_path / "img9.jpg").write_bytes(data[: len(data) // 2])  # truncated
    paths.append(str(tmp_path / "missing.png"))
    cluster = HelperCluster()
    try:
        address = cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        out = subprocess.run(
            [sys.executable, "-c", SPREAD_SCRIPT, address, json.dumps(paths)],
            env=child_env(cluster.tmpdir),
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        cluster.shutdown()
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["same"] and result["bad"] == [5, 9, 30]
    assert result["rows"] == 31 and result["nodes"] == 3  # 11 tasks of 3 files, dealt to the 3 nodes in turn


def test_unknown_cache_mode_names_the_choices():
    from raydf.errors import ConfigError

    with pytest.raises(ConfigError, match="data.cache.*auto, memory, disk, encoded, stream, off"):
        load_config(None, ["data.cache=packed"])
    with pytest.raises(ConfigError, match="data.cache_format.*original, png, jpeg"):
        load_config(None, ["data.cache_format=webp"])
