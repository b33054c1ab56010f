"""The seed's albumentations pipelines, ported to albumentations 2.x by meaning.

Inputs are images already decoded and resized to `data.resize` (the seed's first `Resize(256, 256)`),
outputs are uint8 (crop, crop, 3) RGB; normalisation happens on the device (`raydf.training.engine.to_input`),
which moves a quarter of the bytes to the GPU and spares the CPU a float pass.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import CropSizeError

# The 2021 GaussNoise(var_limit=(10, 50)) drew a variance in 8-bit pixel units: std = sqrt(10..50) px.
# albumentations 2.x takes the std as a fraction of full scale and defaults to ~16x stronger noise.
SEED_NOISE_STD = (np.sqrt(10) / 255, np.sqrt(50) / 255)  # ~ (0.0124, 0.0277)


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Seed a pipeline so that its transforms still draw independently.

    albumentations 2.0.8's `Compose(seed=s)` / `set_random_seed(s)` gives every transform its own generator
    seeded with the same `s`, so their first "apply?" draws coincide: a flip would always come with a grey
    conversion and a JPEG recompression. One shared generator keeps the probabilities independent.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _affine() -> A.Affine:
    # ShiftScaleRotate(0.1, 0.2, 10, BORDER_CONSTANT) is deprecated; Affine with the same ranges. keep_ratio:
    # ShiftScaleRotate drew one scale for both axes (Affine's default draws x and y scales independently).
    return A.Affine(
        translate_percent=(-0.1, 0.1),
        scale=(0.8, 1.2),
        rotate=(-10, 10),
        keep_ratio=True,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        p=0.5,
    )


class FastFancyPCA(A.FancyPCA):
    """albumentations' `FancyPCA`: the same random draw and the same result (to +-1 of rounding) at about a
    seventeenth of the cost (0.1 ms instead of 1.6 ms at 156 px), for uint8 RGB images.

    The reference converts the image to float32, builds the pixel covariance with `np.cov`, and adds a noise
    image computed by two matrix products. That noise is linear in the centred pixel, `(x - mean) @ D @ V.T`
    (V: eigenvectors of the covariance, D: diag(alpha * eigenvalues), as in `fpixel.fancy_pca`), so the whole
    augmentation is one affine colour map, which `cv2.transform` applies to uint8 pixels with rounding and
    saturation, as the reference's clip and `np.rint` do.
    """

    def apply(self, img: np.ndarray, alpha_vector: np.ndarray, **params) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            return super().apply(img, alpha_vector, **params)
        mean = np.array(cv2.mean(img)[:3])  # (3,) in 0..255
        # Centred channel planes, (H*W,) float32 each: numpy's reductions over (N, 3) rows are 5x slower.
        centred = [plane.ravel().astype(np.float32) - np.float32(m) for plane, m in zip(cv2.split(img), mean)]
        cov = np.empty((3, 3))
        for i in range(3):
            for j in range(i, 3):
                cov[i, j] = cov[j, i] = np.dot(centred[i], centred[j])
        # The reference's covariance, in its [0, 1] units (np.cov: ddof=1), so eigh returns the same vectors.
        cov /= (img.shape[0] * img.shape[1] - 1) * 255.0**2
        eig_vals, eig_vecs = np.linalg.eigh(cov)
        order = eig_vals[::-1].argsort()
        eig_vals, eig_vecs = eig_vals[order], eig_vecs[:, order]
        m = np.diag(alpha_vector * eig_vals) @ eig_vecs.T  # (3, 3): noise = (x - mean) @ m, in pixel units
        affine = np.hstack([(np.eye(3) + m).T, -(mean @ m)[:, None]])  # (3, 4): out = affine @ [x; 1]
        return cv2.transform(img, affine)


def _pixel_ops(fast: bool = False) -> list:
    """The seed's per-pixel augmentations, in its order (they come before and after its flip).

    `fast`: the same augmentations with cheaper implementations of the same computation (`FastFancyPCA`).
    """
    fancy_pca = FastFancyPCA() if fast else A.FancyPCA()
    return [
        A.ImageCompression(quality_range=(60, 100), p=0.5),
        A.GaussNoise(std_range=SEED_NOISE_STD, p=0.1),
        # blur_limit=3 with sigma 0 meant a 3x3 kernel with OpenCV's sigma for it: 0.3*((3-1)*0.5-1)+0.8 = 0.8.
        A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.8, 0.8), p=0.05),
        A.OneOf([A.RandomBrightnessContrast(), fancy_pca, A.HueSaturationValue()], p=0.7),
        A.ToGray(p=0.2),
    ]


def train_transform(crop: int, seed: int | None = None) -> A.Compose:
    """The seed's training augmentations (after its Resize), ending with the centre crop."""
    jpeg, noise, blur, colour, gray = _pixel_ops()
    transform = A.Compose(
        [jpeg, noise, blur, A.HorizontalFlip(p=0.5), colour, gray, _affine(), A.CenterCrop(crop, crop)],
        save_applied_params=True,  # lets tests (and curious users) see which transforms fired
    )
    if seed is not None:
        seed_transform(transform, seed)
    return transform


def eval_transform(crop: int) -> A.Compose:
    """Validation and test: the centre crop only (decoding already resized)."""
    return A.Compose([A.CenterCrop(crop, crop)])


class FastTrainTransform:
    """`train_transform`'s augmentations at a fraction of the cost: one warp straight into the crop, then the
    per-pixel operations on the crop only.

    The reference order (pixel ops on the full image, flip, affine warp of the full image, centre crop) spends
    most of its time on pixels the crop throws away: at 256 -> 156 px the crop keeps 37% of them. Here the flip,
    the affine transform (parameters drawn by albumentations' own `Affine`) and the crop offset are composed
    into one matrix and `cv2.warpAffine` writes only the crop. The per-pixel operations (JPEG, noise, blur,
    colour, grey) keep their order and probabilities and run on the crop; pixels the warp filled with the
    border colour are blacked out again afterwards, as the reference (which warps after colouring) leaves
    them. Differences that remain: noise and JPEG blocks are not resampled by the warp.
    tests/test_transforms.py compares the output statistics of both pipelines.
    """

    def __init__(self, crop: int):
        self.crop = crop
        self.affine = _affine()
        self.flip_p = 0.5
        self.pixel = A.Compose(_pixel_ops(fast=True))
        self.set_random_state(np.random.default_rng(), random.Random())

    def set_random_state(self, random_generator: np.random.Generator, py_random: random.Random) -> None:
        self.py_random = py_random
        self.affine.set_random_state(random_generator, py_random)
        self.pixel.set_random_state(random_generator, py_random)

    def __call__(self, *, image: np.ndarray) -> dict[str, np.ndarray]:
        h, w = image.shape[:2]
        if h < self.crop or w < self.crop:  # the reference's CenterCrop refuses this too
            raise CropSizeError(
                f"Crop size (height, width) exceeds image dimensions (height, width): "
                f"{(self.crop, self.crop)} vs {(h, w)}"
            )
        c, top, left = self.crop, (h - self.crop) // 2, (w - self.crop) // 2
        matrix = np.eye(3)
        if self.py_random.random() < self.flip_p:
            matrix = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]])
        warped = self.py_random.random() < self.affine.p
        if warped:
            params = self.affine.get_params_dependent_on_data({"shape": image.shape}, {"image": image})
            matrix = params["matrix"] @ matrix
        matrix = np.array([[1.0, 0, -left], [0, 1, -top], [0, 0, 1]]) @ matrix  # (3, 3) source -> crop pixels
        coverage = None
        if warped:
            out = cv2.warpAffine(
                image, matrix[:2], (c, c), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
            )
            coverage = cv2.warpAffine(
                np.full((h, w), 255, np.uint8),
                matrix[:2],
                (c, c),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
        elif matrix[0, 0] < 0:  # flip only: the mirrored columns of the crop window
            out = image[top : top + c, w - left - c : w - left][:, ::-1]
        else:
            out = image[top : top + c, left : left + c]
        out = self.pixel(image=np.ascontiguousarray(out))["image"]
        if coverage is not None and coverage.min() < 255:
            out = ((out.astype(np.uint16) * coverage[..., None] + 127) // 255).astype(np.uint8)
        return {"image": out}
