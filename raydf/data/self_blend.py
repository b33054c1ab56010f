"""Self-blended fakes: a real face blended with an altered copy of itself through a soft face mask.

The idea of Self-Blended Images (Shiohara & Yamasaki, CVPR 2022), written here from its description: the network
learns the blending boundary and the colour and frequency mismatch that every face swap leaves, not the quirks of
one generator, so a detector trained this way generalises to fakes it never saw. Plain NumPy/OpenCV; every draw
comes from the generator it is given, so a sample's fake is the same for the same (seed, epoch, row).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # how much of the altered copy shows inside the mask


@dataclass(frozen=True)
class BlendSettings:
    """`synth.*`. The face is assumed centred in the image, as in a face crop (raydf.faces, FFHQ-style sets)."""

    mask_scale: float = 1.0  # the mask ellipse's size relative to one of 64% x 80% of the image (a face crop's face)
    edge: float = 0.06  # the mask's soft edge: blur sigma as a fraction of the image side (randomised 0.5-1.5x)


def face_mask(h: int, w: int, rng: np.random.Generator, settings: BlendSettings = BlendSettings()) -> np.ndarray:
    """A soft face mask (h, w) float32 in [0, 1]: an ellipse around the face centre, randomly scaled, rotated,
    shifted and deformed (its outline's points jittered), then dilated or eroded and blurred at its edge."""
    s = settings.mask_scale * rng.uniform(0.9, 1.15)
    cx, cy = w * (0.5 + rng.uniform(-0.03, 0.03)), h * (0.53 + rng.uniform(-0.03, 0.03))
    ax, ay = w * 0.32 * s * rng.uniform(0.92, 1.08), h * 0.40 * s * rng.uniform(0.92, 1.08)
    angle = rng.uniform(-0.25, 0.25)  # radians
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radius = 1 + rng.uniform(-0.08, 0.08, size=t.shape)  # deform the outline
    x, y = ax * radius * np.cos(t), ay * radius * np.sin(t)
    points = np.stack([cx + x * np.cos(angle) - y * np.sin(angle), cy + x * np.sin(angle) + y * np.cos(angle)], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255)
    k = int(rng.integers(1, max(2, round(0.04 * min(h, w)))))  # dilate or erode by up to 4% of the side
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    mask = cv2.dilate(mask, kernel) if rng.random() < 0.5 else cv2.erode(mask, kernel)
    sigma = max(0.5, settings.edge * min(h, w) * rng.uniform(0.5, 1.5))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), sigma)


def alter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of `image` (H, W, 3) uint8 RGB with other colours and frequencies, slightly moved: what a swapped-in
    face brings (another camera, light and compression) and where it lands (a little off)."""
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    # Colour: a per-channel gain (white balance), brightness and contrast.
    out = out * rng.uniform(0.9, 1.1, size=3) * rng.uniform(0.85, 1.15) + rng.uniform(-20, 20)
    out = (out - out.mean()) * rng.uniform(0.85, 1.15) + out.mean()
    out = np.clip(out, 0, 255).astype(np.uint8)
    # Frequency: blur or sharpen, then (half the time) a JPEG re-encode.
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.2))
    else:
        soft = cv2.GaussianBlur(out, (0, 0), 1.0)
        out = cv2.addWeighted(out, 1 + rng.uniform(0.3, 1.0), soft, -rng.uniform(0.3, 1.0), 0)
    if rng.random() < 0.5:
        ok, jpeg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 95))])
        out = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
    # Position: a shift of up to 3% and a scale of 0.95-1.05 about the centre.
    scale = rng.uniform(0.95, 1.05)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, scale)
    matrix[:, 2] += rng.uniform(-0.03, 0.03, size=2) * (w, h)
    return cv2.warpAffine(out, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


def self_blend(
    image: np.ndarray, rng: np.random.Generator, settings: BlendSettings = BlendSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake of a real face (H, W, 3) uint8: `mask * altered + (1 - mask) * image`, the mask scaled
    by a random blend ratio. Returns the fake and the mask used (H, W) float32 in [0, 1]."""
    h, w = image.shape[:2]
    mask = face_mask(h, w, rng, settings) * rng.choice(BLEND_RATIOS)
    altered = alter(image, rng).astype(np.float32)
    fake = mask[..., None] * altered + (1 - mask[..., None]) * image.astype(np.float32)
    return np.clip(np.round(fake), 0, 255).astype(np.uint8), mask
