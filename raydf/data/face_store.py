"""The faces folder: crops, one finished-marker per source, and the manifests built from them.

    FACES_DIR/settings.json      the FaceSettings the crops were made with
    FACES_DIR/crops/<key>/*.png  one source's crops (<key>: its file name and a hash of its path)
    FACES_DIR/parts/<key>.json   written last, atomically: the source is done (its rows, or why it has none)
    FACES_DIR/faces.csv          the manifest: one row per crop (MANIFEST_COLUMNS)
    FACES_DIR/no_faces.csv       the sources that gave no crop, with the reason
    FACES_DIR/extraction.json    counts and timings of the last extraction

A killed extraction leaves sources with crops but no part file: they are extracted again (their crop folder
emptied first), so a resumed extraction never mixes two attempts' crops.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pandas as pd

from raydf import signals
from raydf.data.faces import LANDMARK_COLUMNS, MANIFEST_COLUMNS, NO_FACE_COLUMNS, FaceSettings, SourceFaces
from raydf.data.images import BadImage, read_image
from raydf.errors import ConfigError

MANIFEST = "faces.csv"
NO_FACES = "no_faces.csv"


def source_key(source: str) -> str:
    """A folder name for one source: readable (its file name) and unique (a hash of its full path)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).name)[:48]
    return f"{stem}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temp file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with signals.partial_file(str(tmp)):
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class FaceStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def claim(self, settings: FaceSettings) -> None:
        """Use this folder for `settings`: record them when it is new, refuse when it holds other settings."""
        path = self.root / "settings.json"
        wanted = settings.to_dict()
        if path.is_file():
            # A key missing on one side is at its default (FaceSettings.to_dict leaves those out).
            defaults = {
                f.name: f.default for f in dataclasses.fields(FaceSettings) if f.default is not dataclasses.MISSING
            }
            held = {**defaults, **json.loads(path.read_text())}
            full = {**defaults, **wanted}
            changed = {k: (held.get(k), full.get(k)) for k in sorted({*held, *full}) if held.get(k) != full.get(k)}
            if changed:
                diff = ", ".join(f"faces.{k}={new} (the folder's: {old})" for k, (old, new) in changed.items())
                raise ConfigError(
                    f"faces folder {self.root} holds crops made with other settings: {diff}. Crops of two "
                    "settings must not mix: choose another FACES_DIR, set the keys back, or delete the folder"
                )
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise ConfigError(
                f"faces folder {self.root} exists and is not a raydf faces folder (no settings.json); "
                "choose an empty or new folder"
            )
        atomic_write(path, (json.dumps(wanted, indent=2) + "\n").encode())

    def settings(self) -> Optional[dict]:
        path = self.root / "settings.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def part(self, key: str) -> Path:
        return self.root / "parts" / f"{key}.json"

    def done(self, key: str) -> bool:
        return self.part(key).is_file()

    def write_source(self, key: str, source: str, label: Optional[int], group: str, result: SourceFaces) -> dict:
        """Write one source's crops, then its part file (the marker that it is done); returns the part."""
        folder = self.root / "crops" / key
        if folder.exists():  # a killed attempt's crops
            shutil.rmtree(folder)
        rows = []
        if result.faces:
            folder.mkdir(parents=True)
        for face in result.faces:
            name = f"f{face.frame:06d}_{face.face}.png"
            ok, png = cv2.imencode(".png", cv2.cvtColor(face.crop, cv2.COLOR_RGB2BGR))
            assert ok, "PNG encoding of a uint8 image cannot fail"
            atomic_write(folder / name, png.tobytes())
            rows.append(
                [f"crops/{key}/{name}", label, group, source, face.frame, face.face]
                + [round(float(v), 2) for v in face.box]
                + [round(face.score, 5)]
                + [round(float(v), 2) for v in face.landmarks.reshape(-1)]
            )
        part = {
            "source": source,
            "label": label,
            "group": group,
            "rows": rows,
            "reason": result.reason,
            "note": result.note,
            "frames_used": result.frames_used,
            "frames_grabbed": result.frames_grabbed,
            "seconds": round(result.seconds, 4),
        }
        atomic_write(self.part(key), json.dumps(part).encode())
        return part

    def read_part(self, key: str) -> dict:
        return json.loads(self.part(key).read_text())

    def write_manifests(self, parts: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """faces.csv and no_faces.csv of the sources' `parts` (`read_part`), in their order."""
        rows, missing = [], []
        for part in parts:
            rows += part["rows"]
            if part["reason"]:
                missing.append([part["source"], part["label"], part["group"], part["reason"]])
        faces = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        no_faces = pd.DataFrame(missing, columns=NO_FACE_COLUMNS)
        if faces["label"].notna().all():
            faces["label"] = faces["label"].astype("int64")
        atomic_write(self.root / MANIFEST, faces.to_csv(index=False).encode())
        atomic_write(self.root / NO_FACES, no_faces.to_csv(index=False).encode())
        return faces, no_faces


def is_face_manifest(spec: Optional[str | os.PathLike]) -> bool:
    """Whether `spec` is a faces.csv made by `python -m raydf.faces` (its columns say so)."""
    if spec is None:
        return False
    path = Path(spec).expanduser()
    if not path.is_file() or path.suffix.lower() != ".csv":
        return False
    try:
        columns = set(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError, pd.errors.ParserError):
        return False
    return {"path", "source", "frame", "face"} <= columns


def read_manifest(spec: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A faces.csv (crop paths made absolute) and the no_faces.csv beside it (empty when there is none)."""
    path = Path(spec).expanduser().resolve()
    faces = pd.read_csv(path, dtype={"source": str, "group": str})
    faces["path"] = [str((path.parent / p).resolve()) for p in faces["path"]]
    beside = path.parent / NO_FACES
    no_faces = pd.read_csv(beside, dtype={"source": str}) if beside.is_file() else pd.DataFrame(columns=NO_FACE_COLUMNS)
    return faces, no_faces


def lists_landmarks(spec: Optional[str | os.PathLike]) -> bool:
    """Whether `spec` is a faces manifest with the five landmarks' columns (lm0_x..lm4_y)."""
    if not is_face_manifest(spec):
        return False
    return set(LANDMARK_COLUMNS) <= set(pd.read_csv(Path(spec).expanduser(), nrows=0).columns)


def manifest_landmarks(spec: str | os.PathLike, paths: list[str], size: int) -> Optional[np.ndarray]:
    """The five landmarks (len(paths), 5, 2) float32 of the crops `paths` (absolute, as the catalog gives them)
    listed in the faces manifest `spec`, in the pixels of a crop decoded at `size` x `size` (data.resize): the
    manifest's crop pixels x size / the crops' side (faces.size, in settings.json beside it; else the first crop's).
    NaN for a path the manifest does not list or whose landmarks are missing. None when `spec` has no landmarks.
    """
    if not lists_landmarks(spec):
        return None
    faces, _ = read_manifest(spec)
    points = faces[LANDMARK_COLUMNS].to_numpy(np.float64).reshape(-1, 5, 2)
    side = (FaceStore(Path(spec).expanduser().resolve().parent).settings() or {}).get("size")
    if side is None and len(faces):  # a manifest without its settings.json: its crops are square, of one size
        try:
            side = read_image(faces["path"].iloc[0])[0].shape[0]
        except BadImage:
            side = None
    row_of = {path: i for i, path in enumerate(faces["path"])}
    at = np.array([row_of.get(p, -1) for p in paths], np.int64)
    out = np.full((len(paths), 5, 2), np.nan, np.float32)
    if side:
        out[at >= 0] = points[at[at >= 0]] * (size / float(side))
    return out
