"""Video frames: which frames to use, and decoding only what reaching them needs (PyAV, FFmpeg's libraries).

A video is first *indexed*: its packets are read without decoding (cheap: no pixel is computed), which gives
every frame's timestamp and which frames are keyframes, the frames a decoder can start from. Each wanted
frame is then reached the cheaper way: decoding on from where the decoder is, or seeking to the last
keyframe at or before it and decoding from there. Only the wanted frames are converted to RGB arrays.
With `keyframes`, the frames used are keyframes themselves, so each costs one decode.

OpenCV's `VideoCapture` cannot tell where keyframes are: its frame seek goes back a fixed distance and decodes
forward, and the frames that costs are invisible to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import av
import numpy as np

from raydf.errors import DataError

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")

# A seek costs about as much as decoding this many frames (the decoder is flushed and the container re-read).
SEEK_COST = 1


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


def keyframe_indices(keyframes: np.ndarray, n_frames: int, frames_per_video: int, frame_step: int = 0) -> list[int]:
    """The keyframes to use (frame indices; `keyframes` sorted): the nearest keyframe to each frame `frame_indices`
    picks, each once, so fewer when keyframes are sparser than the frames asked for."""
    if len(keyframes) == 0:
        return []
    targets = np.asarray(frame_indices(n_frames, frames_per_video, frame_step))
    nearest = np.abs(keyframes[None, :] - targets[:, None]).argmin(1)  # (targets,) positions in `keyframes`
    return sorted({int(keyframes[i]) for i in nearest})


@dataclass
class VideoIndex:
    """Every frame of a video in presentation order: its timestamp and whether it is a keyframe."""

    pts: np.ndarray  # (N,) int64, in the stream's time base
    keyframe: np.ndarray  # (N,) bool
    complete: bool = True  # False: reading the packets stopped at damage; the frames after it are not here

    def __post_init__(self) -> None:
        self.keyframes = np.flatnonzero(self.keyframe)  # (K,) ascending frame indices

    def last_keyframe(self, index: int) -> int:
        """The last keyframe at or before frame `index` (frame 0 when there is none: decoders start there)."""
        at = np.searchsorted(self.keyframes, index, side="right")
        return int(self.keyframes[at - 1]) if at else 0


@dataclass
class FrameStats:
    """What reading one video cost: frames in it (as its header says), decoded, retrieved (converted = used).

    `grabbed` counts every frame the decoder produced, used or not (the name is OpenCV's word for a decoded
    frame that is not converted; manifests store it as `frames_grabbed`).
    """

    n_frames: int = 0
    grabbed: int = 0
    retrieved: int = 0
    seeks: int = 0
    keyframes: int = 0
    fps: float = 0.0
    size: tuple[int, int] = field(default=(0, 0))  # (width, height)
    truncated_at: int | None = None  # a damaged file: the frames it really holds (fewer than n_frames)


def index_video(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> VideoIndex:
    """Read the packets of `stream` (no decoding) into a `VideoIndex`; stops at damage, keeping what came before."""
    pts, keys, complete = [], [], True
    try:
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or packet.size == 0:  # the demuxer's final empty packet
                continue
            pts.append(stamp)
            keys.append(packet.is_keyframe)
    except av.FFmpegError:
        complete = False
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")  # decode order -> presentation order
    return VideoIndex(np.asarray(pts, dtype=np.int64)[order], np.asarray(keys, dtype=bool)[order], complete)


def read_frames(
    path: str, frames_per_video: int, frame_step: int = 0, keyframes: bool = False
) -> tuple[list[tuple[int, np.ndarray]], FrameStats]:
    """The chosen frames of one video as (frame index, (H, W, 3) uint8 RGB) pairs, in order.

    `keyframes`: use keyframes only (the nearest to the frames that would be chosen otherwise), each decoded
    alone. A truncated video gives frames from before the damage (its header promised more; the stats tell).

    Raises:
        BadVideo: missing, not a video FFmpeg can open, no video stream or no frame could be decoded.
    """
    if not Path(path).is_file():
        raise BadVideo(path, "file not found")
    if Path(path).stat().st_size == 0:
        raise BadVideo(path, "empty file (0 bytes)")
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError):
        raise BadVideo(
            path,
            "cannot be opened as a video: corrupt, truncated (an MP4 cut short loses its index) or a format FFmpeg "
            "does not read",
        ) from None
    try:
        if not container.streams.video:
            raise BadVideo(path, "zero frames: the file holds no video stream")
        stream = container.streams.video[0]
        stats = FrameStats(
            n_frames=int(stream.frames or 0),
            fps=float(stream.average_rate or 0.0),
            size=(stream.codec_context.width, stream.codec_context.height),
        )
        index = index_video(container, stream)
        n = len(index.pts)
        stats.keyframes = int(index.keyframe.sum())
        if n == 0:
            raise BadVideo(path, "zero frames" if index.complete else "no frame could be read (damaged from the start)")
        if stats.n_frames > n:
            stats.truncated_at = n
        stats.n_frames = stats.n_frames or n
        if keyframes:
            wanted = keyframe_indices(index.keyframes, n, frames_per_video, frame_step)
        else:
            wanted = frame_indices(n, frames_per_video, frame_step)
        frames = _decode_wanted(container, stream, index, wanted, stats)
    finally:
        container.close()
    if not frames:
        raise BadVideo(path, f"no frame could be decoded (header: {stats.n_frames})")
    return frames, stats


def _decode_wanted(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: VideoIndex,
    wanted: list[int],
    stats: FrameStats,
) -> list[tuple[int, np.ndarray]]:
    """Decode the `wanted` frames (ascending indices into `index`), each reached from the decoder's position or
    by a seek to its last keyframe, whichever decodes fewer frames."""
    frames: list[tuple[int, np.ndarray]] = []
    position = {int(p): i for i, p in enumerate(index.pts)}
    decoder: Optional[Iterator[av.VideoFrame]] = None
    at = 0  # the index of the frame the decoder produces next
    pending: Optional[tuple[int, av.VideoFrame]] = None  # decoded past a wanted frame missing from the stream
    for want in wanted:
        start = index.last_keyframe(want)
        if decoder is None or at > want + 1 or (want - at) > (want - start) + SEEK_COST:
            # After indexing, the container is at its end: the first frame needs a seek too (to frame 0 or a
            # later keyframe); only seeks past frame 0 count as skipping.
            container.seek(int(index.pts[start]), stream=stream, backward=True, any_frame=False)
            stats.seeks += start > 0 or decoder is not None
            decoder, at, pending = _frames(container, stream), start, None
        while True:
            if pending is None:
                decoded = next(decoder, None)
                if decoded is None:  # the stream ended (or broke) before `want`: later frames are unreachable too
                    return frames
                stats.grabbed += 1
                # A seek may land on an earlier keyframe than asked: the timestamp says which frame this is.
                got = position.get(decoded.pts, at) if decoded.pts is not None else at
                at, pending = got + 1, (got, decoded)
            got, decoded = pending
            if got < want:
                pending = None
                continue
            if got == want:
                frames.append((want, decoded.to_ndarray(format="rgb24")))
                stats.retrieved += 1
                pending = None
            break  # got > want: `want` is not in the stream; the frame may be a later wanted one
    return frames


def _frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """Decoded frames from the container's position; a decoding error ends them (damage), it does not raise."""
    try:
        yield from container.decode(stream)
    except av.FFmpegError:
        return
