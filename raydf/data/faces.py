"""Faces out of photos and video frames: MTCNN detection at a reduced size, square crops with a margin.

Plain PyTorch/OpenCV (no Ray): `FaceExtractor.extract(source)` turns one photo or video into crops and their
manifest rows, or a reason why it gave none. `raydf.distributed.faces` runs it over a cluster. `survey_framing`
looks at a sample of a set's photos for `data.faces=auto`: face crops, or photos with faces in a scene?
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from raydf.config import FacesConfig
from raydf.data.images import BadImage, read_image
from raydf.data.video import BadVideo, is_video, read_frames

# Crop coordinates of the five MTCNN landmarks: left eye, right eye, nose, left and right mouth corner.
LANDMARK_COLUMNS = [f"lm{i}_{axis}" for i in range(5) for axis in ("x", "y")]
BOX_COLUMNS = ["box_x1", "box_y1", "box_x2", "box_y2"]  # the detected face in the source's pixels
MANIFEST_COLUMNS = ["path", "label", "group", "source", "frame", "face", *BOX_COLUMNS, "score", *LANDMARK_COLUMNS]
NO_FACE_COLUMNS = ["source", "label", "group", "reason"]

# data.faces=auto on a set of photos: where the largest face MTCNN keeps sits in each of a sample of them.
# Measured with the default faces.* (detect_size 640, min_score 0.95, min_face 40). Face crops: the 2,200 photos of
# ../shared/data/ffhq-stylegan-2200 (FFHQ-aligned real faces and StyleGAN fakes, 256 px; a face kept in 2,198) have
# a face box covering 0.28-0.66 of the image (median 0.40), its centre at most 0.20 of the side from the middle (99%
# within 0.16); the built-in demo's drawn faces (300 at 256 px, a face kept in 278) 0.23-0.47, at most 0.09. A crop
# made by a face pipeline (1.2-1.3x the box in FaceForensics++'s, DFDC's and DeepfakeBench's, raydf's faces.margin
# 0.3) covers about half. Uncropped photos made from the same faces, pasted at about a third of the side into a
# scene (480x360, raydf.data.demo_media.write_photo): 0.02-0.05. Both thresholds sit about 2x from both sides:
# - SMALL_FACE 0.12: a face box of less than this leaves the image more than ~2.9 face widths across, a person in a
#   scene, not a face crop (crops' least 0.23, scenes' most 0.05);
# - OFF_CENTRE 0.25: a face crop is centred on its face (crops' farthest 0.20, nearly all under 0.16); a box that
#   far out is also at most half the side: a face beside the middle of a wider picture.
SMALL_FACE = 0.12
OFF_CENTRE = 0.25
# The set is extracted when at least this share of the sampled (readable) photos shows a small or off-centre face:
# crops measure 0 of 2,200 photos, the scenes all of them; a set of half scenes gets extracted (crops lose little by
# being cropped again, scenes gain a lot). A photo in which MTCNN keeps no face counts against extracting: the
# extraction uses the same detector and settings, so it would give that photo no crop either (a set of faces MTCNN
# cannot see, or of no faces at all, would be left with nothing to train on).
UNCROPPED_SHARE = 0.5


@dataclass(frozen=True)
class Framing:
    """Where the largest face kept in one photo sits: its box's share of the image area, and how far its centre is
    from the image's centre (the larger of x and y, as a fraction of that side)."""

    area: float
    offset: float

    @property
    def uncropped(self) -> bool:
        return self.area < SMALL_FACE or self.offset > OFF_CENTRE


@dataclass
class FramingSurvey:
    """`data.faces=auto`'s look at a sample of a set's photos: one Framing per readable photo (None: no face kept)."""

    framings: list[Optional[Framing]]
    unreadable: int = 0

    @property
    def readable(self) -> int:
        return len(self.framings)

    @property
    def with_face(self) -> int:
        return sum(f is not None for f in self.framings)

    @property
    def uncropped(self) -> int:
        return sum(f is not None and f.uncropped for f in self.framings)

    @property
    def mean_area(self) -> float:
        areas = [f.area for f in self.framings if f is not None]
        return float(np.mean(areas)) if areas else 0.0

    @property
    def extract(self) -> bool:
        """Whether the set holds photos with faces in a scene (to extract), not face crops."""
        return self.readable > 0 and self.uncropped >= UNCROPPED_SHARE * self.readable

    def to_dict(self) -> dict:
        return {
            "framings": [None if f is None else [f.area, f.offset] for f in self.framings],
            "unreadable": self.unreadable,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FramingSurvey:
        return cls([None if f is None else Framing(*f) for f in d["framings"]], int(d["unreadable"]))

    def describe(self, training: bool = True) -> str:
        """What was seen and decided, in one line; for a training set with the key that decides otherwise."""
        n = self.readable
        counts = f"{self.uncropped} small or off centre, {self.with_face - self.uncropped} face-filling"
        if self.with_face < n:
            counts += f", no face kept in {n - self.with_face}"
        if self.unreadable:
            counts += f"; {self.unreadable} unreadable"
        photos = f"{n} sampled photo{'s' if n != 1 else ''} ({counts})"
        if self.extract:
            decided = "extracting faces" + ("; data.faces=off to train on whole photos" if training else "")
            return f"faces cover {self.mean_area:.0%} of the frame on average in {photos}: {decided}"
        keep = "training on them as they are; data.faces=on to extract" if training else "predicting them as they are"
        if self.with_face * 2 >= n > 0:
            return f"faces fill {self.mean_area:.0%} of the frame on average in {photos}: already face crops: {keep}"
        return f"MTCNN keeps a face in {self.with_face} of {photos}: not photos of faces to crop: {keep}"


def spread_sample(n: int, k: int) -> list[int]:
    """`k` indices spread evenly over range(n), first and last included (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


@dataclass(frozen=True)
class FaceSettings:
    """What decides the crops; stored with them (`settings.json`), so crops of two settings never mix.

    The fields and their defaults are `faces.*` (`raydf.config.FacesConfig`); `size` is resolved to pixels.
    """

    frames_per_video: int
    frame_step: int
    detect_size: int
    margin: float
    size: int
    keep: str
    min_face: int
    min_score: float
    keyframes: bool = False  # added later: stored only when true, so folders made before it keep their key

    @classmethod
    def from_config(cls, faces: FacesConfig, resize: int) -> FaceSettings:
        """The settings of `faces.*`; an unset `faces.size` means the training pipeline's `data.resize`."""
        values = {f.name: getattr(faces, f.name) for f in dataclasses.fields(cls)}
        values["size"] = faces.size or resize
        return cls(**values)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        for f in dataclasses.fields(self):  # fields with a default: only when set (see `keyframes`)
            if f.default is not dataclasses.MISSING and values[f.name] == f.default:
                del values[f.name]
        return values


@dataclass
class Face:
    frame: int
    face: int
    box: np.ndarray  # (4,) x1 y1 x2 y2, source pixels
    score: float
    crop: np.ndarray  # (size, size, 3) uint8 RGB
    landmarks: np.ndarray  # (5, 2) crop pixels


@dataclass
class SourceFaces:
    """One source's faces, or the reason it has none; and what reading it cost."""

    faces: list[Face]
    reason: Optional[str] = None
    note: Optional[str] = None  # something the user should know about a source that did give faces
    frames_used: int = 0
    frames_grabbed: int = 0
    seconds: float = 0.0


def crop_square(
    image: np.ndarray, box: np.ndarray, landmarks: np.ndarray, margin: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The square around `box` grown by `margin`, resized to `size` px; outside the image is black.

    Returns the (size, size, 3) crop and `landmarks` (5, 2) moved into its pixels.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    side_px = max(int(round(side)), 1)
    h, w = image.shape[:2]
    # Pad only as far as the square leaves the image, then cut it out.
    pad = max(0, -left, -top, left + side_px - w, top + side_px - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    square = image[top + pad : top + pad + side_px, left + pad : left + pad + side_px]
    interp = cv2.INTER_AREA if side_px > size else cv2.INTER_CUBIC
    crop = cv2.resize(square, (size, size), interpolation=interp)
    scale = size / side_px
    return crop, (np.asarray(landmarks, dtype=np.float64) - [left, top]) * scale


class FaceExtractor:
    """MTCNN (facenet-pytorch; its weights ship in the package) and the crop settings, loaded once per worker."""

    def __init__(self, settings: FaceSettings, device: Optional[str] = None, batch_size: int = 32):
        from facenet_pytorch import MTCNN  # imports torchvision: only where faces are detected

        self.settings = settings
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # MTCNN's image pyramid starts at min_face_size: a larger one (the smallest face kept, at detection
        # scale) skips the finest, costliest levels. The scale is not known until a frame is seen; 20 px
        # (MTCNN's default) is the floor that still finds a min_face face in a frame scaled down 2-4x.
        self.mtcnn = MTCNN(keep_all=True, device=self.device, post_process=False, min_face_size=20)

    def extract(self, path: str) -> SourceFaces:
        """The faces of one photo or video (kept by `keep`, `min_face`, `min_score`), or why there are none."""
        start = time.perf_counter()
        s = self.settings
        try:
            note = None
            if is_video(path):
                frames, stats = read_frames(path, s.frames_per_video, s.frame_step, s.keyframes)
                grabbed = stats.grabbed
                if stats.truncated_at is not None:
                    note = (
                        f"truncated: {stats.truncated_at} of the {stats.n_frames} frames its header lists are readable"
                    )
            else:
                frames, grabbed = [(0, read_image(path)[0])], 1
        except (BadVideo, BadImage) as e:
            return SourceFaces([], e.reason, seconds=time.perf_counter() - start)
        return self.faces_of(frames, grabbed, note, start)

    def faces_of(
        self, frames: list[tuple[int, np.ndarray]], grabbed: int = 1, note: Optional[str] = None, start: float = 0.0
    ) -> SourceFaces:
        """The faces kept in decoded frames (index, (H, W, 3) RGB) of one source, or why there are none."""
        start = start or time.perf_counter()
        s = self.settings
        faces, found, largest_small = [], 0, 0.0
        for chunk in _chunks(frames, self.batch_size):
            detections = self.detect([f for _, f in chunk])
            for (index, frame), (boxes, scores, landmarks) in zip(chunk, detections):
                kept = []
                for box, score, lms in zip(boxes, scores, landmarks):
                    if score < s.min_score:
                        continue
                    found += 1
                    short = min(box[2] - box[0], box[3] - box[1])
                    if short < s.min_face:
                        largest_small = max(largest_small, short)
                        continue
                    kept.append((box, score, lms))
                if s.keep == "largest" and kept:
                    kept = [max(kept, key=lambda k: (k[0][2] - k[0][0]) * (k[0][3] - k[0][1]))]
                for i, (box, score, lms) in enumerate(kept):
                    crop, crop_lms = crop_square(frame, box, lms, s.margin, s.size)
                    faces.append(Face(index, i, box, float(score), crop, crop_lms))
        reason = None
        if not faces:
            frames_word = f"{len(frames)} frame{'s' if len(frames) != 1 else ''}"
            if found:
                reason = f"faces smaller than faces.min_face={s.min_face} px (largest {largest_small:.0f} px)"
            else:
                reason = f"no face found in {frames_word} (faces.min_score={s.min_score})"
        return SourceFaces(faces, reason, note, len(frames), grabbed, time.perf_counter() - start)

    def framing(self, image: np.ndarray) -> Optional[Framing]:
        """Where the largest face this extractor would keep (min_score, min_face) sits in one (H, W, 3) RGB image;
        None when it keeps none."""
        h, w = image.shape[:2]
        boxes, scores, _ = self.detect([image])[0]
        short = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes = boxes[(scores >= self.settings.min_score) & (short >= self.settings.min_face)]
        if not len(boxes):
            return None
        x1, y1, x2, y2 = boxes[int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))]
        area = (x2 - x1) * (y2 - y1) / (w * h)
        offset = max(abs((x1 + x2) / 2 / w - 0.5), abs((y1 + y2) / 2 / h - 0.5))
        return Framing(float(area), float(offset))

    def detect(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """MTCNN on frames of one size, batched, at `detect_size`; boxes (n, 4), scores (n,) and landmarks
        (n, 5, 2) per frame, in the frames' own pixels."""
        h, w = frames[0].shape[:2]
        limit = self.settings.detect_size
        scale = min(1.0, limit / max(h, w)) if limit > 0 else 1.0
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        with torch.inference_mode():
            boxes, scores, landmarks = self.mtcnn.detect(np.stack(frames), landmarks=True)
        out = []
        for b, p, lm in zip(boxes, scores, landmarks):
            if b is None:  # no face in this frame
                out.append((np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))))
                continue
            b = np.asarray(b, dtype=np.float64).reshape(-1, 4) / scale
            lm = np.asarray(lm, dtype=np.float64).reshape(-1, 5, 2) / scale
            out.append((b, np.asarray(p, dtype=np.float64).reshape(-1), lm))
        return out


def survey_framing(extractor: FaceExtractor, paths: Sequence[str]) -> FramingSurvey:
    """The framing of the faces in the photos `paths` (a sample of a set: see `spread_sample`), one at a time (they
    may differ in size); an unreadable photo is counted, not looked at (the set's own checks report it).

    On one CPU thread, as the extraction actors run: MTCNN's small convolutions gain little from more, and on a
    machine whose cores are busy torch's thread pool made it 4-10x slower (40 photos of 256 px: 2.5-4 s on one
    thread, 14-33 s on two, on a loaded 2-core machine)."""
    framings, unreadable = [], 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in paths:
            try:
                image = read_image(path)[0]
            except BadImage:
                unreadable += 1
                continue
            framings.append(extractor.framing(image))
    finally:
        torch.set_num_threads(threads)
    return FramingSurvey(framings, unreadable)


def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), max(n, 1))]
