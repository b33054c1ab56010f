"""Reading video frames (raydf.data.video, PyAV): the right frames, exactly, for few decodes.

The videos are OpenCV's mpeg4 (a keyframe every 12 frames), as `raydf.data.demo_media.write_video` writes them;
the reference is OpenCV decoding every frame in order.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from raydf.data.demo_media import write_video
from raydf.data.face_store import FaceStore
from raydf.data.faces import FaceSettings
from raydf.data.video import BadVideo, frame_indices, read_frames
from raydf.errors import ConfigError

N_FRAMES = 300
GOP = 12  # OpenCV's mpeg4 writer: frames 0, 12, 24, ... are keyframes


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A 300-frame video with a moving textured square, and every frame of it as OpenCV decodes it (RGB)."""
    path = tmp_path_factory.mktemp("video") / "long.mp4"
    texture = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    write_video(path, [texture], N_FRAMES, seed=3)
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    assert len(frames) == N_FRAMES
    return path, frames


def test_spread_frames_are_exactly_the_frames_asked_for_and_cost_few_decodes(long_video):
    path, reference = long_video
    for frames_per_video, step in ((32, 0), (8, 0), (10, 7)):
        frames, stats = read_frames(str(path), frames_per_video, step)
        assert [i for i, _ in frames] == frame_indices(N_FRAMES, frames_per_video, step)
        for i, image in frames:  # the same pixels as decoding every frame up to it
            np.testing.assert_array_equal(image, reference[i])
        assert stats.retrieved == len(frames) and stats.keyframes == N_FRAMES // GOP + (N_FRAMES % GOP > 0)
        # Each frame is reached from its keyframe at worst (GOP decodes); decoding on through the whole video
        # would cost every frame up to the last one used.
        assert stats.grabbed <= len(frames) * GOP, (frames_per_video, step, stats)
        assert stats.grabbed < frames[-1][0] + 1
    _, spread8 = read_frames(str(path), 8)
    assert spread8.seeks >= 7 and spread8.grabbed <= 8 * GOP // 2 + 8  # 8 frames 37 apart: a seek for each


def test_every_frame_when_asked_for_all_of_them_without_seeking(long_video):
    path, reference = long_video
    frames, stats = read_frames(str(path), N_FRAMES)
    assert len(frames) == N_FRAMES and stats.grabbed == N_FRAMES and stats.seeks == 0
    np.testing.assert_array_equal(frames[-1][1], reference[-1])


def test_keyframes_only_decodes_one_frame_per_frame_used(long_video):
    path, reference = long_video
    frames, stats = read_frames(str(path), 8, keyframes=True)
    indices = [i for i, _ in frames]
    assert len(indices) == 8 and all(i % GOP == 0 for i in indices)
    assert stats.grabbed == stats.retrieved == 8
    # Spread like the plain choice: each is the keyframe nearest to a frame `frame_indices` picks.
    for i, target in zip(indices, frame_indices(N_FRAMES, 8)):
        assert abs(i - target) <= GOP // 2
    for i, image in frames:
        np.testing.assert_array_equal(image, reference[i])
    # Asked for more frames than there are keyframes: every keyframe once.
    frames, stats = read_frames(str(path), 64, keyframes=True)
    assert [i for i, _ in frames] == list(range(0, N_FRAMES, GOP)) and stats.grabbed == len(frames)


def test_broken_videos_say_why(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    header_only = tmp_path / "header_only.mp4"
    cv2.VideoWriter(str(header_only), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48)).release()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    for path, reason in (
        (tmp_path / "missing.mp4", "file not found"),
        (empty, "empty file"),
        (header_only, "zero frames"),
        (junk, "cannot be opened as a video"),
    ):
        with pytest.raises(BadVideo, match=reason):
            read_frames(str(path), 4)


def test_a_truncated_video_gives_the_frames_before_the_damage(tmp_path):
    whole = tmp_path / "whole.avi"
    write_video(whole, [np.full((96, 96, 3), 200, np.uint8)], 16, seed=1)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    frames, stats = read_frames(str(cut), 32)
    assert stats.n_frames == 16 and stats.truncated_at is not None and 0 < stats.truncated_at < 16
    assert [i for i, _ in frames] == list(range(stats.truncated_at))


def _settings(**changed) -> FaceSettings:
    values = dict(
        frames_per_video=32,
        frame_step=0,
        detect_size=640,
        margin=0.3,
        size=96,
        keep="largest",
        min_face=40,
        min_score=0.95,
    )
    return FaceSettings(**{**values, **changed})


def test_a_faces_folder_made_before_faces_keyframes_existed_keeps_working(tmp_path):
    """Its settings.json has no `keyframes`: the default settings claim it; keyframes=true is refused by name."""
    folder = tmp_path / "faces"
    folder.mkdir()
    old = _settings().to_dict()
    assert "keyframes" not in old  # stored only when set, so the data.faces cache keys of old folders hold
    (folder / "settings.json").write_text(json.dumps(old))
    FaceStore(folder).claim(_settings())
    with pytest.raises(ConfigError, match=r"faces.keyframes=True \(the folder's: False\)"):
        FaceStore(folder).claim(_settings(keyframes=True))
    new = tmp_path / "new"
    FaceStore(new).claim(_settings(keyframes=True))
    with pytest.raises(ConfigError, match=r"faces.keyframes=False \(the folder's: True\)"):
        FaceStore(new).claim(_settings())
