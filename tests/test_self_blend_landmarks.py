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
