"""The built-in demo data set: synthetic faces, the fakes carrying a face-swap trace in the centre.

Generated deterministically by code (no download). Real and fake images come from the same face
generator; the only difference is the swap artefact in the central face region (a resampled,
slightly misaligned, colour-shifted patch blended back with a soft elliptical mask), so a working
pipeline learns it and a broken one stays at chance. The colour shift has zero mean over the fakes,
so whole-image colour statistics do not separate the classes.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEMO_VERSION: int = 1  # bump when the generator changes; part of the cache key

_TRAIN, _TEST, _SHUFFLE = 0, 1, 2  # part ids of the per-image random generators
_SKIN = np.array([[240, 205, 180], [215, 165, 130], [175, 120, 85], [120, 75, 50], [85, 55, 40]], np.float32)
_HAIR = np.array(
    [[25, 20, 18], [70, 45, 30], [125, 85, 50], [200, 165, 110], [150, 150, 150], [140, 60, 30]], np.float32
)


@dataclass(frozen=True)
class DemoSet:
    root: Path
    train: Path  # root/train (a folder with real/ and fake/)
    test: Path  # root/test.csv (path,label; label 1 = fake)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise, roughly unit variance: a coarse random grid upsampled smoothly."""
    grid = rng.standard_normal((cells, cells, channels)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Round and saturate to uint8 (negatives to 0 first: convertScaleAbs takes the absolute value); 4x np.clip."""
    return cv2.convertScaleAbs(cv2.threshold(img, 0, 0, cv2.THRESH_TOZERO)[1])


def _col(c: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(c, 0, 255))


def render_face(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A random synthetic face, (size, size, 3) uint8 RGB: background, head, hair, eyes, brows, nose, mouth,
    lighting and sensor noise."""
    s = size
    # float32 throughout (numpy 2 promotes to float64 on any float64 array or numpy scalar): speed.
    r = np.arange(s, dtype=np.float32) / s - 0.5
    # Background: a two-colour gradient along a random direction, low-frequency texture, a few blurry blobs;
    # all of it smooth, so drawn at a quarter of the size and upscaled (a large blur at full size is slow).
    b = max(8, s // 4)
    c0, c1 = rng.uniform(30, 225, 3).astype(np.float32), rng.uniform(30, 225, 3).astype(np.float32)
    ang = float(rng.uniform(0, 2 * np.pi))
    rb = np.linspace(-0.5, 0.5, b, dtype=np.float32)
    t = np.clip(0.5 + rb[None, :] * np.cos(ang) + rb[:, None] * np.sin(ang), 0, 1)[..., None]
    bg = c0 + (c1 - c0) * t + 12 * _smooth_noise(rng, b, 6, 3)
    for _ in range(rng.integers(2, 6)):
        cv2.circle(
            bg,
            (int(rng.uniform(0, b)), int(rng.uniform(0, b))),
            int(rng.uniform(0.05, 0.2) * b),
            _col(rng.uniform(30, 225, 3)),
            -1,
            cv2.LINE_AA,
        )
    img = cv2.resize(cv2.GaussianBlur(bg, (0, 0), 0.02 * b), (s, s), interpolation=cv2.INTER_LINEAR)

    # Head geometry in pixels; the face stays roughly centred so the artefact lands on it.
    cx, cy = s * (0.5 + rng.normal(0, 0.015)), s * (0.52 + rng.normal(0, 0.015))
    ax = s * rng.uniform(0.26, 0.31)
    ay = ax * rng.uniform(1.22, 1.35)
    k = rng.uniform(0, len(_SKIN) - 1)  # skin tone interpolated along the palette, then jittered
    skin = _SKIN[int(k)] * (1 - k % 1) + _SKIN[min(int(k) + 1, len(_SKIN) - 1)] * (k % 1) + rng.normal(0, 6, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.8, 1.2)
    p = lambda x, y: (int(round(x)), int(round(y)))  # noqa: E731
    e = lambda x, y, a, b, c, ang=0.0, a0=0, a1=360, th=-1: cv2.ellipse(  # noqa: E731
        img, p(x, y), p(a, b), ang, a0, a1, _col(c), th, cv2.LINE_AA
    )

    e(cx, s * 1.05, ax * 1.6, ay * 0.55, rng.uniform(20, 235, 3))  # shoulders / clothes
    cv2.rectangle(img, p(cx - 0.45 * ax, cy), p(cx + 0.45 * ax, s), _col(skin * 0.8), -1)  # neck
    e(cx, cy - 0.12 * ay, ax * 1.12, ay * 0.98, hair)  # hair behind the head
    e(cx, cy, ax, ay, skin, rng.normal(0, 4))  # head
    e(cx - 0.98 * ax, cy, 0.14 * ax, 0.2 * ay, skin * 0.92)  # ears
    e(cx + 0.98 * ax, cy, 0.14 * ax, 0.2 * ay, skin * 0.92)
    e(cx, cy - 0.5 * ay, ax * 1.02, ay * rng.uniform(0.52, 0.62), hair, 0, 180, 360)  # fringe
    ey, dx = cy - 0.12 * ay, 0.38 * ax
    iris = rng.uniform(30, 160, 3)
    tilt = rng.normal(0, 6)
    for sx in (-1, 1):
        x = cx + sx * dx
        e(x, ey, 0.17 * ax, 0.075 * ay, (235, 232, 225))  # eye white
        e(x, ey, 0.07 * ax, 0.07 * ax, iris)
        e(x, ey, 0.032 * ax, 0.032 * ax, (15, 12, 12))
        e(x, ey - 0.02 * ay, 0.19 * ax, 0.09 * ay, skin * 0.75, 0, 200, 340, max(1, int(0.02 * s)))  # lid line
        e(x, ey - 0.13 * ay, 0.2 * ax, 0.05 * ay, hair * 0.9, sx * tilt, 190, 350, max(1, int(0.025 * s)))  # brow
    nose = skin * 0.78
    cv2.line(
        img,
        p(cx, ey + 0.05 * ay),
        p(cx + rng.normal(0, 0.03) * ax, cy + 0.22 * ay),
        _col(nose),
        max(1, int(0.012 * s)),
        cv2.LINE_AA,
    )
    for sx in (-1, 1):
        e(cx + sx * 0.1 * ax, cy + 0.25 * ay, 0.06 * ax, 0.03 * ay, nose * 0.8)  # nostrils
    lip = skin * np.array([1.0, 0.65, 0.65]) + rng.normal(0, 8, 3)
    mw, my = ax * rng.uniform(0.28, 0.4), cy + 0.45 * ay
    e(cx, my, mw, 0.07 * ay, lip)
    e(cx, my, mw, 0.02 * ay * rng.uniform(0, 3), lip * 0.55, 0, 0, 180, max(1, int(0.01 * s)))  # lip gap

    # Lighting from a random direction, fine texture (skin pores, fabric), anti-aliasing, sensor noise.
    # Noise is uniform (rng.random is 4x faster than normal; a std of a needs a width of a*sqrt(12)).
    la, gain = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.85, 1.15))
    g = gain * float(rng.uniform(0.05, 0.35))
    img *= (gain + g * np.cos(la) * r[None, :] + g * np.sin(la) * r[:, None])[..., None]
    img += cv2.GaussianBlur(rng.random((s, s), np.float32) - 0.5, (0, 0), 0.6)[..., None] * 17.0
    img = cv2.GaussianBlur(img, (0, 0), 0.4 + 0.002 * s)
    img += (rng.random((s, s, 3), np.float32) - 0.5) * float(rng.uniform(2.0, 5.0) * 12**0.5)
    return _to_uint8(img)


# The box add_swap_artefact may change, as fractions of (x0, y0, x1, y1); the mask always fits inside it.
ARTEFACT_BOX = (0.2, 0.2, 0.8, 0.85)


def add_swap_artefact(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A copy whose central face region is replaced by a resampled, slightly misaligned, colour-shifted patch
    blended back with a soft elliptical mask, the traces a face-swap leaves. `strength` scales its visibility
    (0 = none). Pixels outside ARTEFACT_BOX are never changed."""
    h, w = img.shape[:2]
    s = min(h, w)
    x0, y0, x1, y1 = (round(f * n) for f, n in zip(ARTEFACT_BOX, (w, h, w, h)))
    src = img[y0:y1, x0:x1].astype(np.float32)  # work on the box only: a third of the pixels
    bh, bw = src.shape[:2]
    # Resampling: down- then up-scaling wipes the sensor noise and fine texture inside the patch.
    f = 1.0 / (1.0 + strength * rng.uniform(1.5, 3.0))
    small = cv2.resize(src, (max(2, round(bw * f)), max(2, round(bh * f))), interpolation=cv2.INTER_AREA)
    patch = cv2.resize(small, (bw, bh), interpolation=cv2.INTER_LINEAR)
    # Misalignment: the swapped face never sits exactly where the original was (ghost edges at the seam).
    m = cv2.getRotationMatrix2D((bw / 2, bh / 2), strength * rng.normal(0, 2), 1 + strength * rng.uniform(-0.04, 0.04))
    m[:, 2] += strength * rng.normal(0, 0.01 * s, 2)
    patch = cv2.warpAffine(patch, m, (bw, bh), borderMode=cv2.BORDER_REFLECT)
    # Colour mismatch: a contrast change and a per-channel offset of random sign (zero mean over the fakes,
    # so the average colour of whole images does not give the class away).
    mean = patch.reshape(-1, 3).mean(0)
    shift = strength * rng.choice([-1.0, 1.0], 3) * rng.uniform(6, 16, 3)
    patch = (patch - mean) * float(1 + strength * rng.uniform(-0.15, 0.15)) + (mean + shift).astype(np.float32)
    # Soft elliptical mask over eyes, nose and mouth (centre ~(0.5, 0.52) of the image), feathered; the
    # bounded blur kernel keeps it inside the box, the cut makes its far tail exactly 0.
    mask = np.zeros((bh, bw), np.float32)
    centre = (
        round(w * (0.5 + np.clip(rng.normal(0, 0.01), -0.03, 0.03))) - x0,
        round(h * (0.52 + np.clip(rng.normal(0, 0.01), -0.03, 0.03))) - y0,
    )
    axes = (round(s * rng.uniform(0.15, 0.19)), round(s * rng.uniform(0.19, 0.23)))
    cv2.ellipse(mask, centre, axes, float(np.clip(rng.normal(0, 4), -10, 10)), 0, 360, 1.0, -1, cv2.LINE_AA)
    sigma = max(0.5, 0.015 * s)
    mask = cv2.GaussianBlur(mask, (2 * int(3 * sigma) + 1,) * 2, sigma)
    mask[mask < 1e-3] = 0.0
    out = img.copy()
    out[y0:y1, x0:x1] = _to_uint8(src + mask[..., None] * (patch - src))
    return out


def _write_jpg(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"could not write {path}")


def _image(seed: int, part: int, index: int, size: int, strength: float) -> tuple[np.ndarray, int]:
    """Image `index` of a part and its label (alternating, so any prefix is balanced); reproducible on its own."""
    rng = np.random.default_rng([seed, part, index])
    label = index % 2
    img = render_face(rng, size)
    return (add_swap_artefact(img, rng, strength) if label else img), label


def make_demo(
    root: str | os.PathLike,
    n_train: int = 1200,
    n_test: int = 400,
    size: int = 256,
    seed: int = 0,
    strength: float = 1.0,
) -> DemoSet:
    """Write the demo set under root (train/real, train/fake, test/*.jpg, test.csv); same bytes for the same
    arguments. Classes are balanced; test names (test00000.jpg...) do not reveal the class."""
    if n_train < 2 or n_test < 2 or size < 32:
        raise ValueError(f"demo set needs n_train >= 2, n_test >= 2, size >= 32 (got {n_train}, {n_test}, {size})")
    root = Path(root)
    for d in ("train/real", "train/fake", "test"):
        (root / d).mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng([seed, _SHUFFLE]).permutation(n_test)  # test index -> shuffled file number

    def train_job(i: int) -> None:
        img, label = _image(seed, _TRAIN, i, size, strength)
        _write_jpg(root / "train" / ("fake" if label else "real") / f"{i // 2:05d}.jpg", img)

    def test_job(i: int) -> None:
        _write_jpg(root / "test" / f"test{order[i]:05d}.jpg", _image(seed, _TEST, i, size, strength)[0])

    # cv2 releases the GIL while drawing, resizing and encoding, so threads do help.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(train_job, range(n_train)))
        list(pool.map(test_job, range(n_test)))
    rows = sorted((f"test/test{order[i]:05d}.jpg", i % 2) for i in range(n_test))
    with open(root / "test.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return DemoSet(root=root, train=root / "train", test=root / "test.csv")


def default_cache_dir() -> Path:
    """$RAYDF_CACHE, else ~/.cache/raydf."""
    env = os.environ.get("RAYDF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raydf"


def ensure_demo(cache_dir: str | os.PathLike | None = None, **make_kwargs) -> DemoSet:
    """Return the demo set for these make_demo arguments, generating it once into the cache.

    The set is built in a temporary sibling folder and renamed into place, so the folder's existence means
    it is complete: an interrupted run removes its temporary folder (a killed one leaves a hidden .<name>.tmp-*
    folder, never a half set), and a process that loses a race discards its own copy."""
    args = {"n_train": 1200, "n_test": 400, "size": 256, "seed": 0, "strength": 1.0, **make_kwargs}
    unknown = set(args) - {"n_train", "n_test", "size", "seed", "strength"}
    if unknown:
        raise TypeError(f"unknown demo arguments: {sorted(unknown)}")
    args = {k: (float(v) if k == "strength" else int(v)) for k, v in args.items()}
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = (
        f"demo-v{DEMO_VERSION}-n{args['n_train']}-t{args['n_test']}-s{args['size']}"
        f"-seed{args['seed']}-k{args['strength']}"
    )
    final = cache / name
    if not final.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished set is an ordinary readable folder
        try:
            make_demo(tmp, **args)
            try:
                os.replace(tmp, final)  # atomic; fails if another process already put a (complete) set there
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return DemoSet(root=final, train=final / "train", test=final / "test.csv")
