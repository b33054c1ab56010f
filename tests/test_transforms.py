import albumentations as A
import cv2
import numpy as np

from raydf.data.images import center_crop, decode_image
from raydf.data.transforms import SEED_NOISE_STD, eval_transform, train_transform


def _image(size=128, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_train_and_eval_output_uint8_crops():
    img = _image()
    for tf in (train_transform(96, seed=1), eval_transform(96)):
        for _ in range(20):  # many draws so most augmentations fire at least once
            out = tf(image=img)["image"]
            assert out.shape == (96, 96, 3) and out.dtype == np.uint8


def test_train_transform_is_seeded():
    img = _image()
    a = [train_transform(96, seed=3)(image=img)["image"] for _ in range(1)]
    b = [train_transform(96, seed=3)(image=img)["image"] for _ in range(1)]
    assert np.array_equal(a[0], b[0])


def test_center_crop_matches_albumentations():
    batch = np.stack([_image(130, s) for s in range(3)])
    ref = np.stack([eval_transform(96)(image=im)["image"] for im in batch])
    assert np.array_equal(center_crop(batch, 96), ref)


def test_gauss_noise_has_the_2021_strength():
    # The seed's GaussNoise(var_limit=(10, 50)) meant a std of 3.2-7.1 grey levels; albumentations 2.x's
    # default is ~16x stronger. Measure what the ported transform adds to a flat grey image.
    flat = np.full((128, 128, 3), 128, np.uint8)
    noise = A.Compose([A.GaussNoise(std_range=SEED_NOISE_STD, p=1.0)], seed=0)
    stds = [noise(image=flat)["image"].astype(float).std() for _ in range(30)]
    assert 2.5 < min(stds) and max(stds) < 7.5  # (uint8 truncation shaves a little off the low end)


def test_decode_converts_bgr_to_rgb_and_resizes(tmp_path):
    img = np.zeros((200, 150, 3), np.uint8)
    img[..., 2] = 255  # pure red in OpenCV's BGR order
    path = str(tmp_path / "red.png")
    cv2.imwrite(path, img)
    out = decode_image(path, 128)
    assert out.shape == (128, 128, 3)
    assert out[..., 0].min() == 255 and out[..., 1:].max() == 0  # red is channel 0 in RGB


def test_seeded_augmentations_fire_independently_at_their_rates():
    # albumentations' own Compose(seed=...) would make every "apply?" draw the same number.
    tf = train_transform(96, seed=7)
    img = _image()
    fired = []
    for _ in range(400):
        names = {name for name, _ in tf(image=img)["applied_transforms"]}
        fired.append(("HorizontalFlip" in names, "ToGray" in names, "ImageCompression" in names))
    flip, gray, jpeg = np.array(fired).T
    assert 0.42 < flip.mean() < 0.58 and 0.14 < gray.mean() < 0.26 and 0.42 < jpeg.mean() < 0.58
    # Independent events: P(gray | flip) is close to P(gray), not 1 or 0.
    assert abs(gray[flip].mean() - gray.mean()) < 0.1
    assert abs(jpeg[flip].mean() - jpeg.mean()) < 0.12


def _stats(transform, image, n=300):
    from raydf.data.transforms import seed_transform

    seed_transform(transform, 11)
    outs = np.stack([transform(image=image)["image"] for _ in range(n)]).astype(np.float64)  # (n, c, c, 3)
    lap = [cv2.Laplacian(o.astype(np.uint8), cv2.CV_64F).var() for o in outs]
    return {
        "mean": outs.mean(),
        "spread": outs.mean(axis=(1, 2, 3)).std(),  # how much brightness varies between draws
        "grey": (np.abs(outs[..., 0] - outs[..., 2]).max(axis=(1, 2)) < 2).mean(),  # ToGray's share
        "mirror": np.mean([np.abs(o - o[:, ::-1]).mean() for o in outs]),
        "sharpness": np.mean(lap),
    }


def test_fast_augmentation_matches_the_reference_statistics():
    from raydf.data.demo import render_face
    from raydf.data.transforms import FastTrainTransform

    face = cv2.resize(render_face(np.random.default_rng(3), 256), (128, 128), interpolation=cv2.INTER_AREA)
    ref = _stats(train_transform(96), face)
    fast = _stats(FastTrainTransform(96), face)
    assert abs(fast["mean"] - ref["mean"]) < 3.0  # grey levels
    assert abs(fast["spread"] / ref["spread"] - 1) < 0.2
    assert abs(fast["grey"] - ref["grey"]) < 0.07
    assert abs(fast["mirror"] / ref["mirror"] - 1) < 0.15
    assert abs(fast["sharpness"] / ref["sharpness"] - 1) < 0.3  # noise and JPEG blocks are not resampled


def test_fast_augmentation_flips_and_crops_like_the_reference():
    from raydf.data.transforms import FastTrainTransform

    img = _image(128)
    fast = FastTrainTransform(96)
    fast.affine.p, fast.pixel.p = 0.0, 0.0  # geometry only, no warp: the crop or its mirror image
    crop = eval_transform(96)(image=img)["image"]
    seen = {"plain": 0, "mirrored": 0}
    for _ in range(50):
        out = fast(image=img)["image"]
        if np.array_equal(out, crop):
            seen["plain"] += 1
        elif np.array_equal(out, img[:, ::-1][16:112, 16:112]):  # flip the whole image, then crop
            seen["mirrored"] += 1
    assert seen["plain"] + seen["mirrored"] == 50 and min(seen.values()) > 10


def test_fast_fancy_pca_equals_albumentations_to_one_grey_level():
    from raydf.data.demo import render_face
    from raydf.data.transforms import FastFancyPCA

    rng = np.random.default_rng(0)
    changed = []
    for i in range(20):  # faces (correlated channels, as in photos) and noise (nearly uncorrelated ones)
        img = render_face(rng, 156) if i % 2 else _image(156, seed=i)
        alpha = rng.normal(0, 0.5, 3).astype(np.float32)  # 5x the default strength: large, visible shifts
        ref = A.FancyPCA(p=1).apply(img, alpha)
        fast = FastFancyPCA(p=1).apply(img, alpha)
        assert fast.dtype == np.uint8 and fast.shape == img.shape
        diff = np.abs(fast.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.25  # rounding only: float32 there, float64 here
        changed.append(np.abs(ref.astype(int) - img).mean())
    assert max(changed) > 1  # the augmentation did change the images: the comparison is not vacuous


def test_network_input_is_the_seeds_normalisation():
    import torch
    from albumentations.pytorch import ToTensorV2

    from raydf.training.engine import IMAGENET_MEAN, IMAGENET_STD, to_input

    batch = np.stack([_image(96, seed=s) for s in range(4)])
    seed = A.Compose([A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])
    expected = torch.stack([seed(image=img)["image"] for img in batch])  # (4, 3, 96, 96)
    x = to_input(torch.from_numpy(batch), torch.device("cpu"))
    assert x.shape == expected.shape and x.dtype == torch.float32
    assert torch.allclose(x, expected, atol=1e-5)
    assert x.is_contiguous(memory_format=torch.channels_last)
