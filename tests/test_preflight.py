"""The pre-flight check and the bad-image policy, at the core level (no Ray)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from raydf.data.images import decode_image
from raydf.data.preflight import BAD_COLUMNS, DUPLICATE_COLUMNS, check_test_set, preflight
from raydf.errors import DataError
from raydf.runs.submission import build_submission


def _write_images(folder: Path, n: int, prefix: str = "img") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(prefix) + n)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        paths.append(str(path))
    return paths


def _break(folder: Path) -> dict[str, str]:
    """Broken files of several kinds: name -> the start of the reason the check must give."""
    ok, jpg = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "cut.jpg").write_bytes(jpg.tobytes()[:300])
    (folder / "error-page.jpg").write_text("<html><body>502 Bad Gateway</body></html>")
    return {
        "missing.jpg": "file not found",
        "zero.jpg": "empty file",
        "cut.jpg": "truncated JPEG",
        "error-page.jpg": "HTML or XML",
    }


@pytest.fixture
def mixed(tmp_path):
    """12 good training images with 3 broken ones among them; 4 good test images and 2 broken ones."""
    good = _write_images(tmp_path / "train", 12)
    broken = _break(tmp_path / "train")
    rows = [(p, i % 2) for i, p in enumerate(good)]
    for k, name in enumerate(["missing.jpg", "zero.jpg", "cut.jpg"]):
        rows.insert(3 + 4 * k, (str(tmp_path / "train" / name), k % 2))
    train = pd.DataFrame(rows, columns=["path", "label"])
    test_good = _write_images(tmp_path / "test", 4, "t")
    test_paths = (
        test_good[:2] + [str(tmp_path / "train" / "error-page.jpg")] + test_good[2:] + [str(tmp_path / "gone.jpg")]
    )
    test = pd.DataFrame({"path": test_paths, "image": [Path(p).name for p in test_paths]})
    return train, test, good, broken


def test_skip_keeps_every_good_image_and_lists_every_bad_one(mixed, caplog):
    train, test, good, broken = mixed
    with caplog.at_level(logging.INFO, logger="raydf"):
        inputs = preflight(train, test, 32, threads=2, on_bad="skip")
    assert inputs.train["path"].tolist() == good  # in their order
    assert inputs.train["label"].tolist() == [i % 2 for i in range(12)]
    assert inputs.images.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(inputs.images[5], decode_image(good[5], 32))
    assert list(inputs.bad.columns) == BAD_COLUMNS
    assert inputs.bad[["set", "row"]].values.tolist() == [
        ["train", 3],
        ["train", 7],
        ["train", 11],
        ["test", 2],
        ["test", 5],
    ]
    assert [Path(p).name for p in inputs.bad["path"]] == [
        "missing.jpg",
        "zero.jpg",
        "cut.jpg",
        "error-page.jpg",
        "gone.jpg",
    ]
    for name, reason in zip(inputs.bad["path"], inputs.bad["reason"]):
        assert reason.startswith(broken.get(Path(name).name, "file not found"))
    assert inputs.bad_counts() == {"train": 3, "test": 2}
    assert inputs.test_bad.keys() == {2, 5}
    assert inputs.prior == 0.5
    assert "pre-flight: checked 15 training and 6 test images" in caplog.text
    assert "5 unreadable (3 training, 2 test)" in caplog.text and "bad_inputs.csv" in caplog.text


def test_error_policy_stops_naming_the_bad_files(mixed):
    train, test, _, _ = mixed
    with pytest.raises(DataError) as info:
        preflight(train, test, 32, on_bad="error")
    msg = str(info.value)
    assert "5 of 21 images cannot be read (data.on_bad=error)" in msg
    for name in ("missing.jpg: file not found", "zero.jpg: empty file", "cut.jpg: truncated JPEG", "error-page.jpg"):
        assert name in msg
    assert "train row 3:" in msg and "test row 5:" in msg and "data.on_bad=skip" in msg


def test_error_message_names_the_first_ten_and_counts_the_rest(tmp_path):
    good = _write_images(tmp_path, 4)
    train = pd.DataFrame(
        {"path": good + [str(tmp_path / f"gone{i}.jpg") for i in range(13)], "label": [0, 1] * 8 + [0]}
    )
    with pytest.raises(DataError) as info:
        preflight(train, None, 32, on_bad="error")
    msg = str(info.value)
    assert "gone9.jpg" in msg and "gone10.jpg" not in msg and "... and 3 more" in msg


def test_skipping_must_leave_both_classes(tmp_path):
    good = _write_images(tmp_path, 3)
    train = pd.DataFrame({"path": good + [str(tmp_path / "gone.jpg")], "label": [0, 0, 0, 1]})
    with pytest.raises(DataError, match="without its 1 unreadable images has only one class: 3 real"):
        preflight(train, None, 32)


def test_no_readable_test_image_is_an_error(tmp_path):
    train = pd.DataFrame({"path": _write_images(tmp_path, 4), "label": [0, 1, 0, 1]})
    test = pd.DataFrame({"path": [str(tmp_path / "a.jpg")], "image": ["a.jpg"]})
    with pytest.raises(DataError, match="none of the 1 test images can be read"):
        preflight(train, test, 32)


def test_byte_identical_files_are_reported_as_duplicates(tmp_path, caplog):
    good = _write_images(tmp_path, 6)
    shutil.copy(good[1], tmp_path / "copy-of-1.png")
    shutil.copy(good[2], tmp_path / "copy-of-2.png")
    shutil.copy(good[4], tmp_path / "leaked.png")
    train = pd.DataFrame(
        {
            "path": good + [str(tmp_path / "copy-of-1.png"), str(tmp_path / "copy-of-2.png")],
            "label": [0, 1, 0, 1, 0, 1, 1, 1],
        }
    )  # copy-of-2 says fake, its original says real
    test = pd.DataFrame({"path": [str(tmp_path / "leaked.png")], "image": ["leaked.png"]})
    with caplog.at_level(logging.WARNING, logger="raydf"):
        inputs = preflight(train, test, 32)
    dup = inputs.duplicates
    assert list(dup.columns) == DUPLICATE_COLUMNS
    assert dup[["copy_group", "set", "row"]].values.tolist() == [
        [0, "train", 1],
        [0, "train", 6],
        [1, "train", 2],
        [1, "train", 7],
        [2, "test", 0],
        [2, "train", 4],
    ]
    assert dup.groupby("copy_group")["sha256"].nunique().eq(1).all()
    assert inputs.content[1] == inputs.content[6] and inputs.content[2] == inputs.content[7]
    assert "4 training files have byte-identical copies under other names (2 group(s)" in caplog.text
    assert "1 group(s) carry both labels" in caplog.text and "copy-of-2.png" in caplog.text
    assert "1 test images are byte-identical to training images" in caplog.text and "leaked.png" in caplog.text


def test_no_duplicates_no_warning(tmp_path, caplog):
    train = pd.DataFrame({"path": _write_images(tmp_path, 4), "label": [0, 1, 0, 1]})
    with caplog.at_level(logging.WARNING, logger="raydf"):
        assert preflight(train, None, 32).duplicates.empty
    assert caplog.text == ""


def test_check_test_set_alone(mixed):
    _, test, _, _ = mixed
    assert check_test_set(test).keys() == {2, 5}
    with pytest.raises(DataError, match="2 of 6 images cannot be read"):
        check_test_set(test, on_bad="error")


# ---------------------------------------------------------------- the submission


def test_unreadable_test_images_keep_their_row_with_the_prior_and_a_flag():
    test = pd.DataFrame({"image": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]})
    sub = build_submission(test, np.array([0.9, 0.2]), bad_rows={1, 3}, prior=0.7)
    assert list(sub.columns) == ["image", "label", "prob_fake", "flag"]
    assert sub["image"].tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert sub["prob_fake"].tolist() == [0.9, 0.7, 0.2, 0.7]
    assert sub["label"].tolist() == [1, 1, 0, 1]
    assert sub["flag"].tolist() == ["", "bad_input", "", "bad_input"]


def test_clean_submission_has_only_the_contract_columns():
    sub = build_submission(pd.DataFrame({"image": ["a", "b"]}), np.array([0.6, 0.4]))
    assert list(sub.columns) == ["image", "label", "prob_fake"] and sub["label"].tolist() == [1, 0]
