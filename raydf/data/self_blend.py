"""Self-blended fakes: a real face blended with an altered copy of itself through a soft face mask.

The idea of Self-Blended Images (Shiohara & Yamasaki, CVPR 2022), written here from its description: the network
learns the blending boundary and the colour and frequency mismatch that every face swap leaves, not the quirks of
one generator, so a detector trained this way generalises to fakes it never saw. Plain NumPy/OpenCV; every draw
comes from the generator it is given, so a sample's fake is the same for the same (seed, epoch, row).

The mask follows the face's five landmarks (eyes, nose, mouth corners; known for crops made by raydf.faces) when
they are given, as SBI's follows its landmark hull; without them it is an ellipse around the image's centre, where a
face crop's face is.

With a `donor` (`synth.other`), the altered copy is another real face instead of the image's own, aligned onto it:
Face X-ray's "blended images" (Li et al., CVPR 2020), whose fakes carry another person's face inside the boundary,
as a face swap's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from raydf.errors import ConfigError

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # how much of the altered copy shows inside the mask
MASK_MODES = ("auto", "ellipse", "landmarks")  # synth.mask
# The landmark hull reaches beyond the five points, in units of the eye-mouth distance (eyes' midpoint to the mouth
# corners' midpoint): up from the eyes to the brows and a little forehead, down from the mouth to the chin (both
# drawn per mask from these ranges), and out past the eyes and mouth corners to the cheeks.
HULL_UP = (0.35, 0.7)
HULL_DOWN = (0.45, 0.75)
HULL_SIDE = 0.55
# The hull's side (the square root of its bounding box's area) in a raydf.faces crop (margin 0.3), as a share of the
# crop's side: a smaller face's mask is dilated, eroded and blurred in proportion to its size, not the image's.
HULL_SHARE = 0.6


@dataclass(frozen=True)
class BlendSettings:
    """`synth.*`. Without landmarks the face is assumed centred in the image, as in a face crop (raydf.faces,
    FFHQ-style sets)."""

    mask_scale: float = 1.0  # the mask's size: relative to the landmark hull, or to an ellipse of 64% x 80% of it
    edge: float = 0.06  # the mask's soft edge: blur sigma as a fraction of the image side (randomised 0.5-1.5x)


def face_mask(
    h: int,
    w: int,
    rng: np.random.Generator,
    settings: BlendSettings = BlendSettings(),
    landmarks: Optional[np.ndarray] = None,
) -> np.ndarray:
    """A soft face mask (h, w) float32 in [0, 1], randomly scaled and deformed (its outline's points jittered), then
    dilated or eroded and blurred at its edge.

    Its shape: the hull of the face's `landmarks` (5, 2) in this image's pixels (left eye, right eye, nose, left and
    right mouth corner) reaching up to the brows and down to the chin; without landmarks (None, or any NaN) an
    ellipse around the image's centre, randomly rotated and shifted.
    """
    found = landmark_outline(landmarks, rng, settings) if has_landmarks(landmarks) else None
    if found is None:
        outline, side = _ellipse_outline(h, w, rng, settings), min(h, w)
    else:
        outline, side = found[0], min(h, w, found[1])  # the side of the crop the face would fill
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 255)
    k = int(rng.integers(1, max(2, round(0.04 * side))))  # dilate or erode by up to 4% of the side
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    mask = cv2.dilate(mask, kernel) if rng.random() < 0.5 else cv2.erode(mask, kernel)
    sigma = max(0.5, settings.edge * side * rng.uniform(0.5, 1.5))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), sigma)


def has_landmarks(landmarks: Optional[np.ndarray]) -> bool:
    return landmarks is not None and bool(np.isfinite(landmarks).all())


def _ellipse_outline(h: int, w: int, rng: np.random.Generator, settings: BlendSettings) -> np.ndarray:
    """An ellipse's outline (24, 2) around the face centre a face crop has: randomly scaled, shifted, rotated and
    deformed."""
    s = settings.mask_scale * rng.uniform(0.9, 1.15)
    cx, cy = w * (0.5 + rng.uniform(-0.03, 0.03)), h * (0.53 + rng.uniform(-0.03, 0.03))
    ax, ay = w * 0.32 * s * rng.uniform(0.92, 1.08), h * 0.40 * s * rng.uniform(0.92, 1.08)
    angle = rng.uniform(-0.25, 0.25)  # radians
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radius = 1 + rng.uniform(-0.08, 0.08, size=t.shape)  # deform the outline
    x, y = ax * radius * np.cos(t), ay * radius * np.sin(t)
    return np.stack([cx + x * np.cos(angle) - y * np.sin(angle), cy + x * np.sin(angle) + y * np.cos(angle)], 1)


def landmark_hull(landmarks: np.ndarray, up: float, down: float, side: float = HULL_SIDE) -> Optional[np.ndarray]:
    """The convex hull (k, 2) of the five landmarks and the points that extend them: `up` x the eye-mouth distance
    above the eyes (brows, forehead), `down` x it below the mouth (chin), `side` x it outside the eyes and mouth
    corners (cheeks), along the face's own axes (a tilted face gets a tilted hull). None for a degenerate face (eyes
    and mouth at one point)."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    eyes, mouth = (lm[0] + lm[1]) / 2, (lm[3] + lm[4]) / 2
    d = _eye_mouth(lm)
    if d is None:
        return None
    u = (mouth - eyes) / d  # down the face
    v = np.array([-u[1], u[0]])  # across it, from the left eye towards the right one
    if v @ (lm[1] - lm[0]) < 0:
        v = -v
    up, down, side = up * d, down * d, side * d
    extra = [
        lm[0] - up * u - 0.5 * side * v,  # brows
        lm[1] - up * u + 0.5 * side * v,
        eyes - 1.1 * up * u,  # the forehead's middle
        lm[0] - side * v,  # temples
        lm[1] + side * v,
        lm[3] - side * v,  # cheeks
        lm[4] + side * v,
        lm[3] + 0.7 * down * u - 0.5 * side * v,  # jaw
        lm[4] + 0.7 * down * u + 0.5 * side * v,
        mouth + down * u,  # chin
    ]
    points = np.concatenate([lm, np.stack(extra)]).astype(np.float32)
    return cv2.convexHull(points)[:, 0].astype(np.float64)


def _eye_mouth(landmarks: np.ndarray) -> Optional[float]:
    """The eye-mouth distance of landmarks (5, 2); None when it is too small to follow."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    d = float(np.hypot(*((lm[3] + lm[4]) - (lm[0] + lm[1])) / 2))
    return d if d > 1e-6 else None


def landmark_outline(
    landmarks: np.ndarray, rng: np.random.Generator, settings: BlendSettings = BlendSettings(), n: int = 32
) -> Optional[tuple[np.ndarray, float]]:
    """The landmark hull's outline as `n` points evenly spaced along it, randomly scaled about its centre (by
    `mask_scale` x 0.9-1.15), rotated a little, shifted and deformed (each point moved in or out by up to 8%), as
    the ellipse is; and the side of the face crop this face would fill (`HULL_SHARE`). None for a degenerate face."""
    if _eye_mouth(landmarks) is None:  # before any draw: the ellipse then gets the draws it would have had
        return None
    hull = landmark_hull(landmarks, rng.uniform(*HULL_UP), rng.uniform(*HULL_DOWN))
    closed = np.concatenate([hull, hull[:1]])
    along = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    t = np.linspace(0, along[-1], n, endpoint=False)
    points = np.stack([np.interp(t, along, closed[:, 0]), np.interp(t, along, closed[:, 1])], 1)
    centre = points.mean(0)
    size = float(np.sqrt(np.prod(points.max(0) - points.min(0))))  # the hull's side
    s = settings.mask_scale * rng.uniform(0.9, 1.15)
    angle = rng.uniform(-0.1, 0.1)  # radians
    shift = rng.uniform(-0.03, 0.03, size=2) * size
    radius = s * (1 + rng.uniform(-0.08, 0.08, size=n))  # deform the outline
    rel = (points - centre) * radius[:, None]
    c, sn = np.cos(angle), np.sin(angle)
    return centre + shift + rel @ np.array([[c, sn], [-sn, c]]), size / HULL_SHARE


def mask_landmarks(mode: str, landmarks: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The landmarks (N, 5, 2) the masks follow under `synth.mask=mode`: none with `ellipse`; with `auto` those
    given (a row with NaN gets an ellipse); `landmarks` the same, but a set without any is an error."""
    if mode not in MASK_MODES:
        raise ConfigError(f"synth.mask must be {', '.join(MASK_MODES)} (got '{mode}')")
    if mode == "ellipse":
        return None
    if mode == "landmarks" and (landmarks is None or not np.isfinite(landmarks).all(axis=(1, 2)).any()):
        raise no_landmarks()
    return landmarks


def no_landmarks() -> ConfigError:
    """`synth.mask=landmarks` on a training set without landmarks."""
    return ConfigError(
        "synth.mask=landmarks: the training set has no face landmarks (the lm0_x..lm4_y columns of a faces.csv "
        "made by python -m raydf.faces); train on a faces manifest, or set synth.mask=auto or ellipse"
    )


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


def align_donor(
    donor: np.ndarray,
    image_shape: tuple[int, ...],
    donor_landmarks: Optional[np.ndarray],
    landmarks: Optional[np.ndarray],
) -> np.ndarray:
    """Another face `donor` (h, w, 3) uint8 moved onto the image's face: by the similarity transform that takes its
    landmarks (5, 2) onto the image's when both are known, else as it is (face crops and FFHQ-style sets put every
    face in the same place); resized to the image's (H, W) when it differs."""
    h, w = image_shape[:2]
    if has_landmarks(donor_landmarks) and has_landmarks(landmarks):
        matrix, _ = cv2.estimateAffinePartial2D(
            np.asarray(donor_landmarks, np.float32).reshape(5, 2), np.asarray(landmarks, np.float32).reshape(5, 2)
        )
        if matrix is not None:
            return cv2.warpAffine(donor, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return donor if donor.shape[:2] == (h, w) else cv2.resize(donor, (w, h), interpolation=cv2.INTER_AREA)


def self_blend(
    image: np.ndarray,
    rng: np.random.Generator,
    settings: BlendSettings = BlendSettings(),
    landmarks: Optional[np.ndarray] = None,
    donor: Optional[np.ndarray] = None,
    donor_landmarks: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake of a real face (H, W, 3) uint8: `mask * altered + (1 - mask) * image`, the mask
    (`face_mask`, around `landmarks` (5, 2) in the image's pixels when given) scaled by a random blend ratio.
    `altered` is a changed copy of the image, or of `donor` (another real face, with its `donor_landmarks`) aligned
    onto it (`align_donor`). Returns the fake and the mask used (H, W) float32 in [0, 1]."""
    h, w = image.shape[:2]
    mask = face_mask(h, w, rng, settings, landmarks) * rng.choice(BLEND_RATIOS)
    source = image if donor is None else align_donor(donor, image.shape, donor_landmarks, landmarks)
    altered = alter(source, rng).astype(np.float32)
    fake = mask[..., None] * altered + (1 - mask[..., None]) * image.astype(np.float32)
    return np.clip(np.round(fake), 0, 255).astype(np.uint8), mask
