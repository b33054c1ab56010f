"""Self-blended fakes (data.synthetic_fakes): what they are made of, which items they replace, and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
from test_resume_core import Crash, _cfg, _comparable, _crash_after, _data

from raydf.config import load_config
from raydf.data.dataset import ImageArrayDataset, SyntheticFakes
from raydf.data.self_blend import BlendSettings, align_donor, face_mask, self_blend
from raydf.data.transforms import eval_transform
from raydf.errors import ConfigError, DataError
from raydf.runs.storage import RunStorage
from raydf.training.fold_loop import fold_datasets, train_fold
from raydf.training.fold_state import FoldStateStore


def face(size: int = 96, seed: int = 0) -> np.ndarray:
    """A textured image (H, W, 3) uint8: blending an altered copy changes it visibly wherever the mask is."""
    rng = np.random.default_rng(seed)
    return rng.integers(30, 220, (size, size, 3), dtype=np.uint8)


def test_the_same_draw_gives_the_same_fake_and_another_draw_another():
    a, mask_a = self_blend(face(), np.random.default_rng(7))
    b, mask_b = self_blend(face(), np.random.default_rng(7))
    c, _ = self_blend(face(), np.random.default_rng(8))
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b) and not np.array_equal(a, c)


@pytest.mark.parametrize("seed", range(20))
def test_the_fake_differs_from_its_source_only_inside_the_mask(seed):
    image = face(seed=seed)
    fake, mask = self_blend(image, np.random.default_rng(seed))
    changed = np.abs(fake.astype(int) - image.astype(int)).max(axis=2)
    assert changed[mask < 1e-3].max(initial=0) <= 1  # outside the mask: the source, to rounding
    assert changed[mask > 0.2].mean() > 3  # inside: the altered copy shows


@pytest.mark.parametrize("seed", range(50))
def test_the_mask_covers_the_face_and_leaves_the_corners(seed):
    """In a face crop, eyes to mouth lie in the central ~40-60% across and ~38-71% down: always well inside the
    mask (over 500 draws its least value there was 0.72); the corners always outside (at most 0.064)."""
    mask = face_mask(112, 112, np.random.default_rng(seed), BlendSettings())
    assert mask[42:80, 44:68].min() > 0.6
    assert max(mask[:8, :8].max(), mask[:8, -8:].max(), mask[-8:, :8].max(), mask[-8:, -8:].max()) < 0.1


def _identity_dataset(images, indices, labels, synthetic, seed=0):
    return ImageArrayDataset(images, indices, labels, eval_transform(images.shape[1]), seed=seed, synthetic=synthetic)


def test_add_appends_one_fake_per_real_and_only_turns_a_share_of_reals_into_fakes():
    images = np.stack([face(64, s) for s in range(40)])
    labels = np.arange(40) % 2  # odd rows: labelled fakes
    reals = np.flatnonzero(labels == 0)
    added = _identity_dataset(images, np.arange(40), labels, SyntheticFakes(extra_rows=reals))
    assert len(added) == 60
    items = [added[i] for i in range(60)]
    assert [y for _, y in items] == [*labels.tolist(), *[1] * 20]  # labelled rows unchanged, then 20 fakes
    assert all(np.array_equal(x.numpy(), images[i]) for i, (x, _) in enumerate(items[:40]))
    assert not any(np.array_equal(x.numpy(), images[r]) for (x, _), r in zip(items[40:], reals))

    only = _identity_dataset(images, reals, labels, SyntheticFakes(share=0.5))
    fakes = 0
    for i, row in enumerate(reals):
        x, y = only[i]
        assert y in (0, 1) and np.array_equal(x.numpy(), images[row]) == (y == 0)  # a fake is a changed image
        fakes += y
    assert 4 <= fakes <= 16  # about half of 20


def test_a_fake_is_drawn_from_seed_epoch_and_row_alone():
    images = np.stack([face(64, s) for s in range(8)])
    labels = np.zeros(8, int)
    make = lambda: _identity_dataset(images, np.arange(8), labels, SyntheticFakes(share=0.5, seed=3), seed=3)  # noqa: E731
    a, b = make(), make()
    b.set_epoch(1)
    b.set_epoch(0)  # back: the same draws as a fresh dataset's
    assert all(np.array_equal(a[i][0].numpy(), b[i][0].numpy()) for i in range(8))
    a.set_epoch(1)
    assert any(not np.array_equal(a[i][0].numpy(), b[i][0].numpy()) for i in range(8))  # another epoch, other fakes


def test_only_never_trains_on_a_labelled_fake_and_validates_on_reals_and_their_fakes():
    images, labels, tr, va = _data()
    cfg = load_config(None, ["data.synthetic_fakes=only", "data.resize=80", "data.crop=76", "train.batch_size=8"])
    train_set, val_set = fold_datasets(images, labels, tr, va, cfg, eval_transform(76), seed=1)
    assert set(labels[train_set.indices]) == {0} and set(train_set.indices) == set(tr[labels[tr] == 0])
    assert list(val_set.indices) == list(va) and list(val_set.synthetic.extra_rows) == list(va[labels[va] == 0])
    cfg.train.batch_size = 32  # more than the fold's 14 reals: said before training, with what to do
    with pytest.raises(DataError, match="this fold has 14, fewer than train.batch_size=32"):
        fold_datasets(images, labels, tr, va, cfg, eval_transform(76), seed=1)


@pytest.mark.parametrize("mode", ["only", "add"])
def test_a_fold_with_synthetic_fakes_resumes_exactly(tmp_path, mode):
    images, labels, tr, va = _data()
    cfg = _cfg(f"data.synthetic_fakes={mode}")
    whole = train_fold(images, labels, tr, va, cfg, 0, state=FoldStateStore(RunStorage(tmp_path / "a"), 0))
    store = FoldStateStore(RunStorage(tmp_path / "b"), 0)
    with pytest.raises(Crash):
        train_fold(images, labels, tr, va, cfg, 0, on_epoch=_crash_after(1), state=store)
    resumed = train_fold(images, labels, tr, va, cfg, 0, state=store)
    assert resumed.resumed_from_epoch == 1 and _comparable(resumed.history) == _comparable(whole.history)
    assert len(whole.val_prob_fake) == len(va)  # out-of-fold: the labelled validation rows only
    off = train_fold(images, labels, tr, va, _cfg(), 0)
    assert _comparable(off.history)[0]["train_loss"] != _comparable(whole.history)[0]["train_loss"]  # it did blend


def test_a_donor_face_is_moved_onto_the_image_by_their_landmarks():
    """synth.other: another face enters a fake where the image's own face is (a similarity transform of the landmarks);
    without landmarks on both, as it is (aligned crops)."""
    image = face(96, 0)
    lm = np.array([[34, 40], [62, 40], [48, 55], [38, 70], [58, 70]], np.float32)
    donor = np.roll(image, (5, -7), axis=(0, 1))  # the same face, 5 px lower and 7 px further left
    aligned = align_donor(donor, image.shape, lm + [-7, 5], lm)
    assert np.abs(aligned.astype(int) - image.astype(int))[12:-12, 12:-12].max() <= 1
    assert np.abs(donor.astype(int) - image.astype(int))[12:-12, 12:-12].mean() > 20  # unaligned: another image
    assert align_donor(donor, image.shape, None, lm) is donor
    assert align_donor(donor, image.shape, lm + [-7, 5], np.full((5, 2), np.nan)) is donor


def test_other_fakes_carry_another_faces_content_and_without_it_the_draws_are_as_before():
    rng = np.random.default_rng(0)
    dark = rng.integers(30, 100, (64, 64, 3), dtype=np.uint8)
    images = np.stack([dark, *[rng.integers(150, 220, (64, 64, 3), dtype=np.uint8) for _ in range(7)]])
    labels = np.zeros(8, int)
    centre = (slice(24, 40), slice(24, 40))  # always inside the mask: eyes to mouth
    lift_own, lift_other = [], []
    for epoch in range(8):
        own = _identity_dataset(images, np.arange(8), labels, SyntheticFakes(extra_rows=np.array([0]), seed=1))
        other = SyntheticFakes(extra_rows=np.array([0]), seed=1, other=1.0, donors=np.arange(8))
        mixed = _identity_dataset(images, np.arange(8), labels, other)
        again = _identity_dataset(images, np.arange(8), labels, other)
        for ds in (own, mixed, again):
            ds.set_epoch(epoch)
        x_own, x_other = own[8][0].numpy(), mixed[8][0].numpy()
        lift_own.append(x_own[centre].mean() - dark[centre].mean())
        lift_other.append(x_other[centre].mean() - dark[centre].mean())
        assert np.array_equal(x_other, again[8][0].numpy())  # drawn from (seed, epoch, row) alone
        s = own.synthetic  # synth.other=0 draws nothing more: the fake a run made before the key existed
        assert np.array_equal(x_own, self_blend(dark, s.draw(2, epoch, 0), s.settings)[0])
    # In every epoch a bright donor's face lifts the dark face's centre (by 31-116 of the 120 between them, as the
    # blend ratio and the donor's own alteration draw), its own altered copy only by its random brightness (-15..+15)
    assert min(lift_other) > 25 and max(np.abs(lift_own)) < 20


def test_other_faces_come_from_the_same_side_of_the_split():
    images, labels, tr, va = _data()
    keys = ["data.synthetic_fakes=only", "data.resize=80", "data.crop=76", "train.batch_size=8", "synth.other=0.5"]
    train_set, val_set = fold_datasets(images, labels, tr, va, load_config(None, keys), eval_transform(76), seed=1)
    assert list(train_set.synthetic.donors) == list(tr[labels[tr] == 0]) and train_set.synthetic.other == 0.5
    assert list(val_set.synthetic.donors) == list(va[labels[va] == 0])
    with pytest.raises(ConfigError, match=r"'synth.other': must be in \[0, 1\] \(got 1.5\)"):
        load_config(None, ["synth.other=1.5"])
