"""Videos and uncropped photos made from face crops: faces pasted at a known place on a varied background.

For the face-extraction tests and benchmarks (and to try `python -m raydf.faces` without a video data set):
every pasted face's box is returned, so a test can check that the crops land on the faces.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np

from raydf.data.images import read_image


@dataclass
class Pasted:
    """One face in one frame: where it was pasted (x1, y1, x2, y2), in frame pixels."""

    frame: int
    face: int
    box: tuple[int, int, int, int]


def background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, 3) uint8 scene: a colour gradient, soft blobs and a few rectangles (no faces)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    t = (x / width * rng.uniform(0.3, 1) + y / height * rng.uniform(0.3, 1))[..., None] / 2
    img = c0 * (1 - t) + c1 * t
    noise = cv2.GaussianBlur(rng.normal(0, 40, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32), (0, 0), 1.5)
    img += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 10, width // 3)), int(rng.integers(height // 10, height // 3))
        cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), tuple(int(v) for v in rng.uniform(0, 255, 3)), -1)
    return img


def paste(frame: np.ndarray, face: np.ndarray, x: int, y: int, size: int) -> tuple[int, int, int, int]:
    """Paste `face` resized to `size` px with its top-left corner at (x, y) (clipped to the frame)."""
    h, w = frame.shape[:2]
    resized = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + size, w), min(y + size, h)
    frame[y1:y2, x1:x2] = resized[y1 - y : y2 - y, x1 - x : x2 - x]
    return x1, y1, x2, y2


def write_video(
    path: Path,
    faces: Sequence[np.ndarray],
    n_frames: int,
    *,
    width: int = 320,
    height: int = 240,
    face_px: int = 96,
    fps: float = 10.0,
    seed: int = 0,
    gop: Optional[int] = None,
) -> list[Pasted]:
    """A video of `n_frames` frames where each of `faces` drifts across a still background; no faces gives a
    video without any. Returns every pasted face's box per frame.

    `gop`: None writes MPEG-4 Part 2 with OpenCV (a keyframe every 12 frames); a number writes H.264 (libx264,
    through PyAV) with a keyframe every `gop` frames, like the field's data (x264's default is 250).
    """
    rng = np.random.default_rng(seed)
    scene = background(width, height, rng)
    starts = [(int(rng.integers(0, width - face_px)), int(rng.integers(0, height - face_px))) for _ in faces]
    if len(faces) == 2:  # two faces side by side, never overlapping
        starts = [(8, (height - face_px) // 2), (width - face_px - 8, (height - face_px) // 2)]
    speed = [(float(rng.uniform(-2, 2)), float(rng.uniform(-1.5, 1.5))) for _ in faces]
    pasted: list[Pasted] = []

    def frames() -> Iterator[np.ndarray]:  # (height, width, 3) RGB
        for t in range(n_frames):
            frame = scene.copy()
            for i, (face, (x0, y0), (vx, vy)) in enumerate(zip(faces, starts, speed)):
                x = int(np.clip(x0 + vx * t, 0, width - face_px))
                y = int(np.clip(y0 + vy * t, 0, height - face_px))
                pasted.append(Pasted(t, i, paste(frame, face, x, y, face_px)))
            yield frame

    if gop is None:
        _write_mpeg4(path, frames(), fps, width, height)
    else:
        _write_h264(path, frames(), fps, gop)
    return pasted


def _write_mpeg4(path: Path, frames: Iterable[np.ndarray], fps: float, width: int, height: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (no mpeg4 encoder)")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def _write_h264(path: Path, frames: Iterable[np.ndarray], fps: float, gop: int) -> None:
    import av  # only here: the demo's other media need OpenCV alone

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = "yuv420p"
        # keyint: the most frames between keyframes; min-keyint and no scene-cut: exactly every `gop` frames.
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "veryfast"}
        for i, frame in enumerate(frames):
            if i == 0:
                stream.width, stream.height = frame.shape[1], frame.shape[0]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)


def write_photo(
    path: Path, face: np.ndarray, *, width: int = 480, height: int = 360, face_px: int = 128, seed: int = 0
) -> Pasted:
    """An uncropped photo: `face` at a random place on a background (JPEG, quality 95)."""
    rng = np.random.default_rng(seed)
    frame = background(width, height, rng)
    x, y = int(rng.integers(0, width - face_px)), int(rng.integers(0, height - face_px))
    box = paste(frame, face, x, y, face_px)
    cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return Pasted(0, 0, box)


def load_faces(paths: Sequence[str | Path]) -> list[np.ndarray]:
    return [read_image(str(p))[0] for p in paths]
