"""End to end: a real data set mixed with every kind of broken and odd file, through training and the CLI.

Named to run after test_ray_pipeline.py: Ray turns a pool worker into each inference actor and ends it with
the actor, so after a soft vote one fold task of the next run cold-starts its worker (~15 s on a loaded
2-core machine) and test_fold_tasks_overlap_in_time, which needs both folds to start together, fails.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, require_shared, tiny_overrides
from PIL import Image

from raydf.config import load_config
from raydf.errors import DataError

needs_shared = pytest.mark.usefixtures("shared_data")  # fails under CI if the shared set is missing

# Broken files: name -> start of the reason bad_inputs.csv must give.
BROKEN = {
    "missing.jpg": "file not found",
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated JPEG",
    "error-page.jpg": "HTML or XML",
    "notes.jpg": "text, not an image",
    "scan.jpg": "unsupported format: a PDF",
}


def _convertible(src: Path, folder: Path) -> list[Path]:
    """Odd but readable versions of one face, each written the way other tools write them."""
    rgb = cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2RGB)
    pil = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6
    writers = {
        "gray.png": lambda p: pil.convert("L").save(p),
        "rgba.png": lambda p: pil.convert("RGBA").save(p),
        "palette.png": lambda p: pil.convert("P").save(p),
        "cmyk.jpg": lambda p: pil.convert("CMYK").save(p),
        "16bit.png": lambda p: cv2.imwrite(str(p), cv2.imread(str(src)).astype(np.uint16) * 257),
        "exif-rotated.jpg": lambda p: pil.transpose(Image.Transpose.ROTATE_90).save(p, exif=exif),
        "face.bmp": lambda p: pil.save(p),
        "face.webp": lambda p: pil.save(p),
        "face.gif": lambda p: pil.save(p),
        "tiny.jpg": lambda p: pil.resize((24, 24)).save(p),
        "huge.jpg": lambda p: pil.resize((4000, 3000), Image.Resampling.NEAREST).save(p, quality=70),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, write in writers.items():
        write(folder / name)
    return [folder / name for name in writers]


def _broken(folder: Path, face: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    data = face.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) * 3 // 5])
    (folder / "error-page.jpg").write_text("<!DOCTYPE html><html><body>429 Too Many Requests</body></html>")
    (folder / "notes.jpg").write_text("these are all fakes\n")
    (folder / "scan.jpg").write_bytes(b"%PDF-1.7\n" + bytes(200))
    return [folder / name for name in BROKEN]  # missing.jpg is listed, never written


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A training CSV of 48 FFHQ/StyleGAN faces + 11 odd-but-readable files + 6 broken ones + one exact copy
    under another name; a test CSV of 12 faces + 2 broken ones."""
    require_shared()
    root = tmp_path_factory.mktemp("messy")
    labels = pd.read_csv(SHARED / "labels.csv")
    real, fake = labels[labels["label"] == 0], labels[labels["label"] == 1]
    faces = pd.concat([real.head(24), fake.head(24)])
    rows = [(str(SHARED / p), lab) for p, lab in zip(faces["path"], faces["label"])]
    odd = _convertible(SHARED / real["path"].iloc[30], root / "odd")
    rows += [(str(p), i % 2) for i, p in enumerate(odd)]
    broken = _broken(root / "broken", SHARED / fake["path"].iloc[30])
    rows += [(str(p), i % 2) for i, p in enumerate(broken)]
    shutil.copy(SHARED / faces["path"].iloc[0], root / "renamed-copy.jpg")
    rows.append((str(root / "renamed-copy.jpg"), 0))
    order = np.random.default_rng(0).permutation(len(rows))  # broken files scattered among good ones
    train = pd.DataFrame([rows[i] for i in order], columns=["path", "label"])
    train.to_csv(root / "train.csv", index=False)
    test_faces = pd.concat([real.iloc[100:106], fake.iloc[100:106]])
    test = [str(SHARED / p) for p in test_faces["path"]]
    test.insert(3, str(root / "broken" / "notes.jpg"))
    test.append(str(root / "test-gone.jpg"))
    pd.DataFrame(
        {"path": test, "label": list(test_faces["label"][:3]) + [1] + list(test_faces["label"][3:]) + [0]}
    ).to_csv(root / "test.csv", index=False)
    return root, train, {str(p) for p in broken}


def _overrides(run_dir: Path, root: Path) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"data.train={root / 'train.csv'}",
        f"data.test={root / 'test.csv'}",
        "data.resize=96",
        "data.crop=80",
        "train.folds=2",
        "train.epochs=1",
        "train.batch_size=16",
        "train.eval_batch_size=32",
        "predict.batch_size=16",
        "resources.gpus_per_fold=0",
    ]


@pytest.mark.slow
def test_messy_set_trains_to_the_end_leaving_out_exactly_the_broken_files(ray_local, messy, tmp_path, caplog):
    from raydf.pipelines.training import train

    root, table, broken = messy
    with caplog.at_level(logging.INFO, logger="raydf"):  # the CLI's default level: raydf.log gets INFO lines
        run_dir = Path(train(load_config(None, _overrides(tmp_path / "run", root))))

    bad = pd.read_csv(run_dir / "bad_inputs.csv", keep_default_na=False)
    train_bad = bad[bad["set"] == "train"]
    assert set(train_bad["path"]) == broken  # exactly the unreadable files, nothing else
    for path, row, reason in zip(train_bad["path"], train_bad["row"], train_bad["reason"]):
        assert table["path"].iloc[row] == path and reason.startswith(BROKEN[Path(path).name])
    test_bad = bad[bad["set"] == "test"]
    assert test_bad[["row", "reason"]].values.tolist() == [
        [3, "text, not an image (starts with 'these are all fakes')"],
        [13, "file not found"],
    ]

    folds = pd.read_csv(run_dir / "folds.csv")  # every readable image is used, and only those
    assert folds["path"].tolist() == [p for p in table["path"] if p not in broken]
    assert len(folds) == 48 + 11 + 1
    dup = pd.read_csv(run_dir / "duplicates.csv")
    assert len(dup) == 2 and dup["sha256"].nunique() == 1
    assert folds.set_index("path").loc[dup["path"], "fold"].nunique() == 1  # the copies share a fold

    sub = pd.read_csv(run_dir / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["image", "label", "prob_fake", "flag"] and len(sub) == 14
    assert sub["flag"].tolist() == [""] * 3 + ["bad_input"] + [""] * 9 + ["bad_input"]
    prior = folds["label"].mean()
    assert sub.loc[[3, 13], "prob_fake"].tolist() == pytest.approx([prior, prior])

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["bad_inputs"] == {"train": 6, "test": 2}
    assert {"folds", "cv", "test"} <= set(summary)
    log = (run_dir / "raydf.log").read_text()
    assert "60 training images in 2 folds (6 unreadable left out), 14 test images (2 unreadable, flagged)" in log
    assert "fold 0 done" in log and "fold 1 done" in log


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raydf.train", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@needs_shared
def test_cli_on_bad_error_stops_before_training_naming_the_files(messy, tmp_path):
    root, _, _ = messy
    proc = _cli(*_overrides(tmp_path / "run", root), "data.on_bad=error")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "8 of 80 images cannot be read (data.on_bad=error)" in proc.stderr
    for name in BROKEN:
        assert name in proc.stderr
    assert "test row 13:" in proc.stderr and "test-gone.jpg: file not found" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written: the same run_dir can be reused


# Each table and config error has its own core test (test_catalog, test_folds, test_config); these two show
# that such errors reach the command line as one message (a subprocess costs ~8 s of imports on 2 cores).
@pytest.mark.parametrize(
    "make, override, expected",
    [
        (
            lambda d: (d / "t.csv").write_text("path,label\na.jpg,0\nb.jpg,1\na.jpg,1\n"),
            "data.train={d}/t.csv",
            "lists the same image more than once",
        ),
        (lambda d: None, "data.test_root={d}/nope", "config key 'data.test_root'"),
    ],
)
def test_cli_table_and_config_errors_exit_2_without_traceback(tmp_path, make, override, expected):
    make(tmp_path)
    proc = _cli(override.format(d=tmp_path), f"run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_crash_inside_a_fold_task_is_one_clear_line(ray_local, tiny_demo, tmp_path):
    """Images smaller than data.crop reach a fold task only through the API; the task's error comes back named."""
    from raydf.distributed.folds import FoldFailed, run_folds

    ray_errors = _Records()
    logging.getLogger("ray").addHandler(ray_errors)
    cfg = load_config(None, tiny_overrides(tmp_path / "run", tiny_demo))
    images = np.zeros((40, 16, 16, 3), np.uint8)  # 16 px < data.crop=80
    splits = {0: (np.arange(20, 40), np.arange(0, 20)), 1: (np.arange(0, 20), np.arange(20, 40))}
    with pytest.raises(FoldFailed) as info:
        run_folds(ray_local.put(images), ray_local.put(np.arange(40) % 2), splits, cfg, {"num_cpus": 1, "num_gpus": 0})
    msg = str(info.value)
    assert msg.startswith("fold ") and " failed: CropSizeError: Crop size" in msg
    assert "Traceback" not in msg and "\n" not in msg
    del info
    gc.collect()
    time.sleep(2)  # Ray reports an error object nobody fetched when its last reference goes
    logging.getLogger("ray").removeHandler(ray_errors)
    assert not [r for r in ray_errors.records if "Unhandled error" in r.getMessage()]  # no second traceback


def test_a_data_error_on_a_worker_is_found_behind_ray_s_wrapping(ray_local):
    from raydf.data.images import decode_image
    from raydf.errors import find_user_error

    ref = ray_local.remote(decode_image).remote("/nonexistent/face.jpg", 32)
    with pytest.raises(ray_local.exceptions.RayTaskError) as info:
        ray_local.get(ref)
    user = find_user_error(info.value)
    assert isinstance(user, DataError) and "Traceback" not in str(user)
    assert str(user) == "cannot decode /nonexistent/face.jpg: file not found. Fix or remove it from the data set."
