"""Self-blended fakes whose masks follow the face's five landmarks (synth.mask): where the mask lies, when it falls
back to the ellipse, and how the landmarks of a faces manifest reach the fakes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from raydf.config import load_config
from raydf.data.dataset import ImageArrayDataset, SyntheticFakes
from raydf.data.self_blend import BlendSettings, face_mask, landmark_hull, mask_landmarks, self_blend
from raydf.data.transforms import eval_transform
from raydf.errors import ConfigError
from raydf.training.fold_loop import fold_datasets

# A small face near the top-left corner of a 128 px image (eyes, nose, mouth corners): where a centred ellipse is not.
OFF_CENTRE = np.array([[11, 13], [26, 13], [18, 21], [13, 29], [24, 29]], np.float32)


def _texture(size: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, (size, size, 3), dtype=np.uint8)


def _around(landmarks: np.ndarray, size: int, grow: float = 1.6) -> np.ndarray:
    """(size, size) bool: the widest landmark hull a mask starts from, grown `grow` x about its centre."""
    hull = landmark_hull(landmarks, 0.7, 0.75)
    centre = hull.mean(0)
    region = np.zeros((size, size), np.uint8)
    cv2.fillPoly(region, [np.round(centre + (hull - centre) * grow).astype(np.int32)], 1)
    return region.astype(bool)


def _at(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.array([mask[int(round(y)), int(round(x))] for x, y in points])


@pytest.mark.parametrize("seed", range(20))
def test_a_landmark_mask_covers_an_off_centre_face_where_the_ellipse_misses_it(seed):
    """Over 300 draws: at least 0.69 at every landmark; at most 0.15 outside the grown hull (1.3% of the mask's
    mass); the ellipse of the same draw at most 0.35 on average over the landmarks and 0.06 at the left eye."""
    landmarks = face_mask(128, 128, np.random.default_rng(seed), BlendSettings(), OFF_CENTRE)
    assert _at(landmarks, OFF_CENTRE).min() > 0.5
    outside = ~_around(OFF_CENTRE, 128)
    assert landmarks[outside].max() < 0.25 and landmarks[outside].sum() < 0.03 * landmarks.sum()
    assert max(landmarks[-8:, -8:].max(), landmarks[-8:, :8].max(), landmarks[:8, -8:].max()) < 0.01
    ellipse = face_mask(128, 128, np.random.default_rng(seed), BlendSettings())
    assert _at(ellipse, OFF_CENTRE).mean() < 0.5 and _at(ellipse, OFF_CENTRE)[0] < 0.1


@pytest.mark.parametrize("angle", [0, 30])
def test_a_landmark_mask_covers_a_centred_or_tilted_face_and_follows_its_tilt(angle):
    crop = (np.array([[0.32, 0.40], [0.68, 0.40], [0.5, 0.57], [0.36, 0.76], [0.64, 0.76]]) + 0.15) / 1.3 * 96
    a = np.deg2rad(angle)
    turn = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    points = (crop - crop.mean(0)) @ turn.T + crop.mean(0)
    for seed in range(10):
        mask = face_mask(96, 96, np.random.default_rng(seed), BlendSettings(), points)
        outside = ~_around(points, 96)
        assert _at(mask, points).min() > 0.5 and mask[outside].sum() < 0.03 * mask.sum()


def test_the_same_draw_gives_the_same_landmark_mask_and_another_draw_another():
    a = face_mask(128, 128, np.random.default_rng(3), BlendSettings(), OFF_CENTRE)
    b = face_mask(128, 128, np.random.default_rng(3), BlendSettings(), OFF_CENTRE)
    c = face_mask(128, 128, np.random.default_rng(4), BlendSettings(), OFF_CENTRE)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_landmarks_with_a_nan_or_a_degenerate_face_give_the_ellipse():
    ellipse = face_mask(96, 96, np.random.default_rng(5), BlendSettings())
    nan = OFF_CENTRE.copy()
    nan[2, 0] = np.nan
    assert np.array_equal(face_mask(96, 96, np.random.default_rng(5), BlendSettings(), nan), ellipse)
    one_point = np.full((5, 2), 40.0, np.float32)  # eyes and mouth at one point: no face to follow
    assert np.array_equal(face_mask(96, 96, np.random.default_rng(5), BlendSettings(), one_point), ellipse)


def test_synth_mask_modes_auto_ellipse_and_landmarks():
    some = np.stack([OFF_CENTRE, np.full((5, 2), np.nan, np.float32)])
    assert mask_landmarks("auto", some) is some and mask_landmarks("auto", None) is None
    assert mask_landmarks("ellipse", some) is None and mask_landmarks("landmarks", some) is some
    for missing in (None, np.full((3, 5, 2), np.nan, np.float32)):
        with pytest.raises(ConfigError, match=r"synth\.mask=landmarks: the training set has no face landmarks"):
            mask_landmarks("landmarks", missing)
    with pytest.raises(ConfigError, match=r"synth\.mask"):
        load_config(None, ["synth.mask=hull"])
    assert load_config(None, []).synth.mask == "auto"


def test_fold_datasets_take_the_landmarks_and_refuse_landmarks_mode_without_them():
    images = np.stack([_texture(80, s) for s in range(20)])
    labels = np.arange(20) % 2
    tr, va = np.arange(8, 20), np.arange(8)
    landmarks = np.repeat(OFF_CENTRE[None] / 2, 20, axis=0)
    cfg = load_config(None, ["data.synthetic_fakes=add", "data.resize=80", "data.crop=76", "train.batch_size=4"])
    train_set, _ = fold_datasets(images, labels, tr, va, cfg, eval_transform(76), 1, landmarks)
    assert train_set.synthetic.landmarks is landmarks
    cfg.synth.mask = "ellipse"
    assert fold_datasets(images, labels, tr, va, cfg, eval_transform(76), 1, landmarks)[0].synthetic.landmarks is None
    cfg.synth.mask = "landmarks"
    with pytest.raises(ConfigError, match=r"synth\.mask=landmarks"):
        fold_datasets(images, labels, tr, va, cfg, eval_transform(76), 1, None)


def test_a_dataset_blends_its_fakes_around_each_rows_landmarks():
    """Every appended fake changes pixels around its own row's face (three faces in three places), and a row
    without landmarks gets the same fake as with no landmarks at all (the ellipse)."""
    images = np.stack([_texture(128, s) for s in range(4)])
    labels = np.zeros(4, int)
    places = [(0, 0), (80, 10), (40, 85)]  # offsets of the small face: top-left, top-right, bottom-middle
    landmarks = np.stack([OFF_CENTRE + p for p in places] + [np.full((5, 2), np.nan, np.float32)])
    rows = np.arange(4)

    def dataset(points):
        return ImageArrayDataset(
            images,
            rows,
            labels,
            eval_transform(128),
            seed=0,
            synthetic=SyntheticFakes(extra_rows=rows, landmarks=points),
        )

    with_landmarks, without = dataset(landmarks), dataset(None)
    for row in range(3):
        fake, label = with_landmarks[4 + row]
        assert label == 1
        changed = np.abs(fake.numpy().astype(int) - images[row].astype(int)).max(axis=2) > 2
        assert changed.sum() > 200  # the altered copy shows
        assert changed[~_around(landmarks[row], 128)].sum() < 0.03 * changed.sum()  # and only around this face
        centre = np.argwhere(changed).mean(0)[::-1]  # (x, y)
        assert np.hypot(*(centre - landmarks[row].mean(0))) < 10
    assert np.array_equal(with_landmarks[7][0].numpy(), without[7][0].numpy())


def test_self_blend_passes_the_landmarks_to_its_mask():
    image = _texture()
    fake, mask = self_blend(image, np.random.default_rng(2), BlendSettings(), OFF_CENTRE)
    assert _at(mask, OFF_CENTRE).min() > 0.2  # times a blend ratio of at least 0.25
    assert mask[~_around(OFF_CENTRE, 128)].max() < 0.25


# -- a faces manifest's landmarks, on their way to the fakes ---------------------------------------------------------


def _faces_folder(root, side: int = 160, settings: bool = True):
    """A faces folder as raydf.faces writes it: `side` px crops whose faces sit in different places, four reals (the
    last without landmarks) and two fakes. Returns faces.csv and each row's landmarks in crop pixels."""
    import json

    import pandas as pd

    from raydf.data.faces import BOX_COLUMNS, LANDMARK_COLUMNS, MANIFEST_COLUMNS

    (root / "crops").mkdir(parents=True)
    places = [(0, 0), (80, 10), (40, 85), (0, 0), (20, 20), (60, 60)]
    points = np.stack([(OFF_CENTRE + p) * side / 128 for p in places]).astype(np.float64)
    points[3] = np.nan
    rows = []
    for i, lm in enumerate(points):
        cv2.imwrite(str(root / "crops" / f"f{i}.png"), _texture(side, i))
        label = 0 if i < 4 else 1
        rows.append([f"crops/f{i}.png", label, f"v{i}", f"v{i}.mp4", 0, 0, 0, 0, side, side, 0.99, *lm.reshape(-1)])
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(root / "faces.csv", index=False)
    assert MANIFEST_COLUMNS[-10:] == LANDMARK_COLUMNS and len(BOX_COLUMNS) == 4
    if settings:
        (root / "settings.json").write_text(json.dumps({"size": side, "margin": 0.3}))
    return root / "faces.csv", points


@pytest.mark.parametrize("settings", [True, False])
def test_a_manifests_landmarks_are_matched_by_path_and_scaled_to_data_resize(tmp_path, settings):
    from raydf.data.catalog import read_train
    from raydf.data.face_store import manifest_landmarks

    spec, points = _faces_folder(tmp_path, settings=settings)  # no settings.json: the first crop's side
    paths = read_train(spec)["path"].tolist()
    order = [5, 0, 3, 2]
    got = manifest_landmarks(spec, [paths[i] for i in order] + [str(tmp_path / "other.png")], 80)
    assert got.shape == (5, 5, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got[:4], points[order] * 80 / 160, rtol=1e-5)  # NaN where the manifest has none
    assert np.isnan(got[4]).all()  # a path the manifest does not list
    (tmp_path / "plain.csv").write_text("path,label\ncrops/f0.png,0\ncrops/f4.png,1\n")
    assert manifest_landmarks(tmp_path / "plain.csv", paths[:2], 80) is None


def test_a_run_on_a_faces_manifest_blends_around_its_landmarks_and_plots_them(tmp_path, monkeypatch):
    """The driver's side of the run: the fold table's landmarks (what the fold tasks get) and the synthetic_fakes.png
    picture, whose masks lie around each face; synth.mask=landmarks on a set without them stops before decoding."""
    from raydf.data.catalog import read_train
    from raydf.pipelines import training
    from raydf.runs import plots
    from raydf.runs.run_dir import read_tables, table_landmarks

    spec, points = _faces_folder(tmp_path / "faces")
    keys = [f"data.train={spec}", "data.synthetic_fakes=only", "data.resize=80", "data.crop=76", "train.folds=2"]
    cfg = load_config(None, keys)
    table = read_train(spec).iloc[::-1].reset_index(drop=True)  # any order: matched by path
    landmarks = table_landmarks(cfg, table)
    np.testing.assert_allclose(landmarks, points[::-1] / 2, rtol=1e-5)
    assert table_landmarks(load_config(None, [*keys, "synth.mask=ellipse"]), table) is None
    assert table_landmarks(load_config(None, keys[1:]), table) is None  # not a faces manifest: the ellipse

    shown = {}
    monkeypatch.setattr(plots, "synthetic_fakes", lambda *args, **kw: shown.update(args=args, **kw))
    training._plot_synthetic_fakes(cfg, table, tmp_path / "plot.png", landmarks)
    sources, fakes, masks, _ = shown["args"]
    assert len(masks) == 4 and sum(lm is not None and np.isfinite(lm).all() for lm in shown["landmarks"]) == 3
    for mask, lm in zip(masks, shown["landmarks"]):
        if np.isfinite(lm).all():  # 0.25 x a mask at least 0.69 at every landmark; little outside the face
            assert _at(mask, lm).min() > 0.15 and mask[~_around(lm, 80)].sum() < 0.03 * mask.sum()
    monkeypatch.undo()
    training._plot_synthetic_fakes(cfg, table, tmp_path / "plot.png", landmarks)
    assert (tmp_path / "plot.png").stat().st_size > 0

    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\n" + "".join(f"faces/crops/f{i}.png,{int(i >= 4)}\n" for i in range(6)))
    with pytest.raises(ConfigError, match=r"synth\.mask=landmarks"):
        read_tables(load_config(None, [f"data.train={plain}", "data.synthetic_fakes=add", "synth.mask=landmarks"]))


def test_the_fold_tasks_get_the_landmarks_through_the_object_store(ray_local):
    """synth.mask=landmarks: a fold task without landmarks stops at the mask check; with them (put once, like the
    labels) it gets past it to the next check, this fold's 6 reals against train.batch_size (no training run)."""
    from raydf.distributed.folds import FoldFailed, run_folds

    images, labels = np.zeros((20, 80, 80, 3), np.uint8), np.arange(20) % 2
    keys = ["data.synthetic_fakes=only", "synth.mask=landmarks", "data.resize=80", "data.crop=76"]
    cfg = load_config(None, [*keys, "train.batch_size=32", "resources.cpus_per_fold=1"])
    args = (ray_local.put(images), ray_local.put(labels), {0: (np.arange(8, 20), np.arange(8))}, cfg)
    resources = {"num_cpus": 1, "num_gpus": 0}
    with pytest.raises(FoldFailed, match=r"synth\.mask=landmarks"):
        run_folds(*args, resources)
    landmarks = ray_local.put(np.repeat(OFF_CENTRE[None] / 2, 20, axis=0))
    with pytest.raises(FoldFailed, match="this fold has 6, fewer than train.batch_size=32"):
        run_folds(*args, resources, landmarks_ref=landmarks)


def test_a_sweeps_folds_get_the_landmarks(tmp_path):
    """raydf.tune's folds (lockstep_folds -> train_fold) likewise: stopped at the mask check without landmarks, past
    it with them."""
    from raydf.errors import DataError
    from raydf.runs.storage import RunStorage
    from raydf.training.fold_state import FoldStateStore
    from raydf.training.lockstep import lockstep_folds

    images, labels = np.zeros((20, 80, 80, 3), np.uint8), np.arange(20) % 2
    keys = ["data.synthetic_fakes=only", "synth.mask=landmarks", "data.resize=80", "data.crop=76"]
    cfg = load_config(None, [*keys, "train.batch_size=32"])
    splits = {0: (np.arange(8, 20), np.arange(8))}
    with pytest.raises(ConfigError, match=r"synth\.mask=landmarks"):
        next(lockstep_folds(images, labels, splits, cfg, {0: FoldStateStore(RunStorage(tmp_path / "a"), 0)}))
    landmarks = np.repeat(OFF_CENTRE[None] / 2, 20, axis=0)
    stores = {0: FoldStateStore(RunStorage(tmp_path / "b"), 0)}
    with pytest.raises(DataError, match="this fold has 6, fewer than train.batch_size=32"):
        next(lockstep_folds(images, labels, splits, cfg, stores, landmarks=landmarks))


def test_a_run_made_before_synth_mask_resumes_with_the_ellipse_it_trained_with(tmp_path):
    from raydf.config import to_yaml
    from raydf.runs.resume import resume_config

    text = to_yaml(load_config(None, ["data.synthetic_fakes=only"]))
    assert "mask: auto" in text
    for name, saved, expected in (("old", text.replace("  mask: auto\n", ""), "ellipse"), ("new", text, "auto")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(saved)
        (tmp_path / name / "folds.csv").write_text("path,label,fold\n")
        assert resume_config(str(tmp_path / name)).synth.mask == expected
    with pytest.raises(ConfigError, match=r"synth\.mask \('ellipse' -> 'auto'\)"):
        resume_config(str(tmp_path / "old"), overrides=["synth.mask=auto"])


def test_a_run_made_before_synth_other_resumes_with_its_own_faces_only(tmp_path):
    from raydf.config import to_yaml
    from raydf.runs.resume import resume_config

    text = to_yaml(load_config(None, ["data.synthetic_fakes=only"]))
    assert "other: 0.5" in text
    for name, saved, expected in (("old", text.replace("  other: 0.5\n", ""), 0.0), ("new", text, 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(saved)
        (tmp_path / name / "folds.csv").write_text("path,label,fold\n")
        assert resume_config(str(tmp_path / name)).synth.other == expected
