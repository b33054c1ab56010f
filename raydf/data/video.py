"""Video frames: which frames to use, and reading only those (OpenCV's bundled FFmpeg).

Frames that are not used are *grabbed* (demuxed and decoded by FFmpeg, which inter-frame codecs require) but
never *retrieved* (no conversion to an RGB array, no copy): only the frames used cost a full image. Far apart
frames are reached by seeking instead, which jumps to the nearest keyframe.
"""

from __future__ import annotations

import os

# FFmpeg prints a line per damaged file ("moov atom not found"); every such file is reported with its reason
# instead. Read when FFmpeg is first used, so it is set before anything opens a video.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np

from raydf.errors import DataError

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")

# Above this many frames between two wanted ones a seek (to a keyframe, then decode forward) is cheaper than
# grabbing every frame in between; FFmpeg's usual keyframe interval is 12-250 frames.
SEEK_GAP = 60


def is_video(path: str) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class BadVideo(DataError):
    """One video that yields no frames; `reason` says why in a few words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read video {path}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self):  # pickled by Ray with its two arguments, not the formatted message
        return BadVideo, (self.path, self.reason)


def frame_indices(n_frames: int, frames_per_video: int, frame_step: int = 0) -> list[int]:
    """The frames to use: every `frame_step`-th frame (when > 0, at most `frames_per_video` of them), else
    `frames_per_video` frames spread evenly over the video (all of them when it is shorter)."""
    if n_frames <= 0:
        return []
    if frame_step > 0:
        return list(range(0, n_frames, frame_step))[:frames_per_video]
    if n_frames <= frames_per_video:
        return list(range(n_frames))
    # Centres of equal segments: never the very first frame (often black or a fade) nor the last one.
    return sorted({int(i) for i in (np.arange(frames_per_video) + 0.5) * n_frames / frames_per_video})


@dataclass
class FrameStats:
    """What reading one video cost: frames in it (as its header says), grabbed, retrieved (= used)."""

    n_frames: int = 0
    grabbed: int = 0
    retrieved: int = 0
    fps: float = 0.0
    size: tuple[int, int] = field(default=(0, 0))  # (width, height)
    truncated_at: int | None = None  # a damaged file: the frames it really holds (fewer than n_frames)


def read_frames(
    path: str, frames_per_video: int, frame_step: int = 0
) -> tuple[list[tuple[int, np.ndarray]], FrameStats]:
    """The chosen frames of one video as (frame index, (H, W, 3) uint8 RGB) pairs, in order.

    A truncated video gives the frames before the damage (its header promised more; the stats tell).

    Raises:
        BadVideo: missing, not a video OpenCV can open, or no frame could be decoded.
    """
    if not Path(path).is_file():
        raise BadVideo(path, "file not found")
    if Path(path).stat().st_size == 0:
        raise BadVideo(path, "empty file (0 bytes)")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise BadVideo(
                path,
                "cannot be opened as a video: corrupt, truncated (an MP4 cut short loses its index) or a format "
                "FFmpeg does not read",
            )
        stats = FrameStats(
            n_frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            size=(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))),
        )
        if stats.n_frames <= 0:
            # Some containers do not record a frame count: read them through, keeping every frame_step-th.
            wanted = None
        else:
            wanted = frame_indices(stats.n_frames, frames_per_video, frame_step)
        frames, readable = _read_wanted(cap, wanted, frames_per_video, frame_step, stats)
        if wanted is not None and readable is not None and len(frames) < len(wanted):
            # Truncated: the header promised more frames than the file holds. Choose again among the
            # `readable` frames before the damage (a second pass, for damaged files only).
            stats.truncated_at = readable
            cap.release()
            cap = cv2.VideoCapture(path)
            again = frame_indices(readable, frames_per_video, frame_step)
            if again and cap.isOpened():
                frames, _ = _read_wanted(cap, again, frames_per_video, frame_step, stats)
    finally:
        cap.release()
    if not frames:
        reason = "zero frames" if stats.n_frames <= 0 else f"no frame could be decoded (header: {stats.n_frames})"
        raise BadVideo(path, reason)
    return frames, stats


def _read_wanted(
    cap: cv2.VideoCapture, wanted: list[int] | None, frames_per_video: int, frame_step: int, stats: FrameStats
) -> tuple[list[tuple[int, np.ndarray]], int | None]:
    """The `wanted` frames, and the number of frames the file really holds when it ended before the last
    wanted one (None when it did not, or when a seek hides how far it reached)."""
    frames: list[tuple[int, np.ndarray]] = []
    seeked = False
    pos = 0  # the index of the frame the next grab() reads
    if wanted is None:  # unknown length: every frame_step-th frame (or every frame) up to frames_per_video
        step = max(frame_step, 1)
        while len(frames) < frames_per_video and cap.grab():
            stats.grabbed += 1
            if pos % step == 0:
                frames.append((pos, _retrieve(cap, stats)))
            pos += 1
        return [(i, f) for i, f in frames if f is not None], None
    for index in wanted:
        if index - pos > SEEK_GAP and cap.set(cv2.CAP_PROP_POS_FRAMES, index):
            pos, seeked = index, True
        while pos < index:
            if not cap.grab():
                return frames, None if seeked else pos  # truncated: the frames before the damage
            stats.grabbed += 1
            pos += 1
        if not cap.grab():
            return frames, None if seeked else pos
        stats.grabbed += 1
        pos += 1
        frame = _retrieve(cap, stats)
        if frame is not None:
            frames.append((index, frame))
    return frames, None


def _retrieve(cap: cv2.VideoCapture, stats: FrameStats) -> np.ndarray | None:
    ok, bgr = cap.retrieve()
    if not ok or bgr is None:
        return None
    stats.retrieved += 1
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
