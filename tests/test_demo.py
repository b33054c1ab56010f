"""The built-in demo set: deterministic, well laid out, cached once, fakes differ only in the centre."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from raydf.data import demo
from raydf.data.demo import ARTEFACT_BOX, DEMO_VERSION, add_swap_artefact, ensure_demo, make_demo, render_face

SMALL = {"n_train": 8, "n_test": 4, "size": 64}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_same_bytes_every_time(tmp_path: Path) -> None:
    make_demo(tmp_path / "a", **SMALL)
    make_demo(tmp_path / "b", **SMALL)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 8 + 4 + 1 and a == b


def test_seed_changes_the_images(tmp_path: Path) -> None:
    make_demo(tmp_path / "a", **SMALL, seed=0)
    make_demo(tmp_path / "b", **SMALL, seed=1)
    assert _files(tmp_path / "a")["train/real/00000.jpg"] != _files(tmp_path / "b")["train/real/00000.jpg"]


def test_layout_counts_and_labels(tmp_path: Path) -> None:
    ds = make_demo(tmp_path, n_train=10, n_test=6, size=96)
    assert ds.root == tmp_path and ds.train == tmp_path / "train" and ds.test == tmp_path / "test.csv"
    assert len(list((ds.train / "real").glob("*.jpg"))) == 5
    assert len(list((ds.train / "fake").glob("*.jpg"))) == 5
    with open(ds.test, newline="") as fh:
        assert fh.readline().strip() == "path,label"
    rows = _read_csv(ds.test)
    assert len(rows) == 6 and sorted(int(r["label"]) for r in rows) == [0, 0, 0, 1, 1, 1]
    assert {(tmp_path / r["path"]).name for r in rows} == {p.name for p in (tmp_path / "test").iterdir()}
    for r in rows:
        assert re.fullmatch(r"test/test\d{5}\.jpg", r["path"])  # the name does not give the class away
        img = cv2.imread(str(tmp_path / r["path"]))
        assert img is not None and img.shape == (96, 96, 3)


def test_test_part_is_shuffled(tmp_path: Path) -> None:
    rows = _read_csv(make_demo(tmp_path, n_train=2, n_test=40, size=32).test)
    labels = [int(r["label"]) for r in rows]  # rows are sorted by file name
    assert labels != [i % 2 for i in range(40)] and labels != sorted(labels)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_demo("/nonexistent-never-written", n_train=0)


def test_ensure_demo_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    ds = ensure_demo(cache, **SMALL)
    assert ds.root.parent == cache and f"demo-v{DEMO_VERSION}-" in ds.root.name
    assert len(list((ds.train / "fake").glob("*.jpg"))) == 4 and ds.test.is_file()
    before = _mtimes(ds.root)

    def fail(*args, **kwargs):
        raise AssertionError("make_demo called although the set is cached")

    monkeypatch.setattr(demo, "make_demo", fail)
    assert ensure_demo(cache, **SMALL) == ds
    assert _mtimes(ds.root) == before
    assert [p.name for p in cache.iterdir()] == [ds.root.name]  # no temporary folder left


def test_ensure_demo_key_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYDF_CACHE", str(tmp_path))
    a = ensure_demo(**SMALL)
    b = ensure_demo(**{**SMALL, "strength": 0.5})
    assert a.root.parent == tmp_path == b.root.parent and a.root != b.root
    with pytest.raises(TypeError):
        ensure_demo(tmp_path, n_trian=8)


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_make = demo.make_demo

    def interrupted(root, **kwargs):
        (Path(root) / "train" / "real").mkdir(parents=True)
        (Path(root) / "train" / "real" / "00000.jpg").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "make_demo", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(demo, "make_demo", real_make)
    assert len(_files(ensure_demo(tmp_path, **SMALL).root)) == 13


def test_lost_race_keeps_the_winners_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_make = demo.make_demo

    def racing(root, **kwargs):
        out = real_make(root, **kwargs)
        winner = real_make(tmp_path / "winner", **kwargs).root  # another process finishes first...
        (winner / "WINNER").touch()
        name = Path(root).name[1:].rsplit(".tmp-", 1)[0]  # the temporary folder is .<name>.tmp-XXXX
        winner.rename(tmp_path / name)  # ...and renames its set into place
        return out

    monkeypatch.setattr(demo, "make_demo", racing)
    ds = ensure_demo(tmp_path, **SMALL)
    assert (ds.root / "WINNER").exists()  # the winner's set was kept, the loser's copy discarded
    assert [p.name for p in tmp_path.iterdir()] == [ds.root.name]


def test_render_face_is_reproducible() -> None:
    a = render_face(np.random.default_rng(3), 80)
    assert a.shape == (80, 80, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_face(np.random.default_rng(3), 80))
    assert not np.array_equal(a, render_face(np.random.default_rng(4), 80))


@pytest.mark.parametrize("size", [64, 128])
def test_artefact_changes_the_centre_only(size: int) -> None:
    rng = np.random.default_rng(11)
    img = render_face(rng, size)
    orig = img.copy()
    fake = add_swap_artefact(img, rng)
    assert np.array_equal(img, orig)  # the input is not modified
    x0, y0, x1, y1 = (round(f * size) for f in ARTEFACT_BOX)
    outside = np.ones((size, size), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(fake[outside], img[outside])
    c = slice(int(size * 0.4), int(size * 0.6))  # the middle of the face: clearly changed
    assert np.abs(fake[c, c].astype(int) - img[c, c]).mean() > 3


def test_strength_zero_is_no_artefact() -> None:
    rng = np.random.default_rng(5)
    img = render_face(rng, 96)
    assert np.array_equal(add_swap_artefact(img, rng, strength=0.0), img)


def test_mean_colour_does_not_separate_the_classes() -> None:
    # The same 100 faces with and without the artefact: it must not move the whole-image mean colour,
    # neither on average (the colour shift has a random sign) nor much per image compared with how much
    # the mean colour varies between faces.
    deltas, means = [], []
    for i in range(100):
        rng = np.random.default_rng([99, i])
        real = render_face(rng, 64)
        fake = add_swap_artefact(real, rng)
        means.append(real.reshape(-1, 3).mean(0))
        deltas.append(fake.reshape(-1, 3).mean(0) - means[-1])
    deltas, means = np.array(deltas), np.array(means)
    assert np.all(np.abs(deltas.mean(0)) < 1.0)  # grey levels
    assert np.abs(deltas).max() < 5.0 < 15.0 < means.std(0).min()


def test_mean_colour_of_the_written_set(tmp_path: Path) -> None:
    ds = make_demo(tmp_path, n_train=600, n_test=2, size=32)
    m = {
        d: np.array([cv2.imread(str(p)).reshape(-1, 3).mean(0) for p in (ds.train / d).glob("*.jpg")])
        for d in ("real", "fake")
    }
    spread = np.concatenate([m["real"], m["fake"]]).std(0)
    # Unpaired, so the class means differ by sampling noise, spread * sqrt(2/300) ~ 0.08 * spread; a bound of
    # 0.5 * spread is ~6 sigma of that noise, yet far below a class-wide colour cast.
    assert np.all(np.abs(m["real"].mean(0) - m["fake"].mean(0)) < 0.5 * spread)
