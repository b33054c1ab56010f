"""Self-blended fakes (data.synthetic_fakes): what they are made of, which items they replace, and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
from test_resume_core import Crash, _cfg, _comparable, _crash_after, _data

from raydf.config import load_config
from raydf.data.dataset import ImageArrayDataset, SyntheticFakes
from raydf.data.self_blend import BlendSettings, face_mask, self_blend
from raydf.data.transforms import eval_transform
from raydf.errors import DataError
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
