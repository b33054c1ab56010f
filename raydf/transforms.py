"""The seed's albumentations pipelines, ported to albumentations 2.x by meaning.

Inputs are images already decoded and resized to `data.resize` (the seed's first `Resize(256, 256)`),
outputs are uint8 (crop, crop, 3) RGB; normalisation happens on the device (`raydf.engine.to_input`),
which moves a quarter of the bytes to the GPU and spares the CPU a float pass.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np

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


def train_transform(crop: int, seed: int | None = None) -> A.Compose:
    """The seed's training augmentations (after its Resize), ending with the centre crop."""
    transform = A.Compose(
        [
            A.ImageCompression(quality_range=(60, 100), p=0.5),
            A.GaussNoise(std_range=SEED_NOISE_STD, p=0.1),
            # blur_limit=3 with sigma 0 meant a 3x3 kernel with OpenCV's sigma for it: 0.3*((3-1)*0.5-1)+0.8 = 0.8.
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.8, 0.8), p=0.05),
            A.HorizontalFlip(p=0.5),
            A.OneOf([A.RandomBrightnessContrast(), A.FancyPCA(), A.HueSaturationValue()], p=0.7),
            A.ToGray(p=0.2),
            # ShiftScaleRotate(0.1, 0.2, 10, BORDER_CONSTANT) is deprecated; Affine with the same ranges.
            A.Affine(translate_percent=(-0.1, 0.1), scale=(0.8, 1.2), rotate=(-10, 10),
                     border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5),
            A.CenterCrop(crop, crop),
        ],
        save_applied_params=True,  # lets tests (and curious users) see which transforms fired
    )
    if seed is not None:
        seed_transform(transform, seed)
    return transform


def eval_transform(crop: int) -> A.Compose:
    """Validation and test: the centre crop only (decoding already resized)."""
    return A.Compose([A.CenterCrop(crop, crop)])


def center_crop(images: np.ndarray, crop: int) -> np.ndarray:
    """Centre-crop a batch (N, H, W, 3) without albumentations: the same pixels as `eval_transform`."""
    h, w = images.shape[1:3]
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[:, top:top + crop, left:left + crop]
