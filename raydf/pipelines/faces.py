"""Face extraction of a whole source set: list the photos and videos, extract what is not done yet on the
cluster, write the manifests (`faces.csv`, `no_faces.csv`) and `extraction.json`."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import ray

from raydf import signals
from raydf.config import Config
from raydf.data.catalog import IMAGE_EXTENSIONS, read_test, read_train
from raydf.data.demo import default_cache_dir
from raydf.data.face_store import MANIFEST, NO_FACES, FaceStore, atomic_write, is_face_manifest, source_key
from raydf.data.faces import FaceExtractor, FaceSettings, FramingSurvey, spread_sample, survey_framing
from raydf.data.video import VIDEO_EXTENSIONS, is_video
from raydf.distributed.faces import extract_on_cluster
from raydf.distributed.session import ray_session
from raydf.errors import DataError, Interrupted
from raydf.runs.console import CountProgress

log = logging.getLogger(__name__)

MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
# data.faces=auto on a set of photos looks at this many of them, spread evenly over the set (MTCNN on the driver:
# 20-50 ms a photo on one CPU core, plus a second or two to load it; raydf.data.faces.survey_framing).
AUTO_SAMPLE = 40


@dataclass
class Extraction:
    faces_dir: Path
    manifest: Path
    faces: pd.DataFrame
    no_faces: pd.DataFrame
    stats: dict


def face_settings(cfg: Config) -> FaceSettings:
    return FaceSettings.from_config(cfg.faces, cfg.data.resize)


def list_sources(src: str, root: Optional[str] = None) -> pd.DataFrame:
    """The photos and videos of SRC: columns path (absolute), source (its name: the path relative to SRC, or the
    CSV cell as written), label (1 fake, 0 real, -1 unknown) and group.

    SRC is a folder with real/ and fake/, a CSV `path,label[,group]`, or (unlabelled: a test set) a folder of
    media or a CSV of paths. A source's group is the CSV's `group` cell, else its own path (so all the frames of
    one video share a group and land in one fold).
    """
    path = Path(src).expanduser().resolve()
    try:
        table = read_train(path, root, extensions=MEDIA_EXTENSIONS)
        names = [_name(p, path) for p in table["path"]]
    except DataError as labelled_error:
        try:
            table = read_test(path, root, extensions=MEDIA_EXTENSIONS)
        except DataError:
            raise labelled_error from None
        if "label" not in table:
            table["label"] = -1
        names = table["image"].tolist()
    group = table["group"].astype(str).tolist() if "group" in table else names
    return pd.DataFrame(
        {"path": table["path"].astype(str), "source": names, "label": table["label"].astype(int), "group": group}
    )


def _name(source: str, root: Path) -> str:
    """A source's name as the user sees it: relative to a SRC folder, else relative to the CSV's folder."""
    base = root if root.is_dir() else root.parent
    try:
        return Path(source).relative_to(base).as_posix()
    except ValueError:
        return source


def with_extracted_faces(cfg: Config, sample: int = AUTO_SAMPLE) -> Config:
    """`data.faces`: the config with data.train / data.test replaced by the faces manifests of their sets,
    extracted first (or found done) under the cache folder, keyed by the set's path and the face settings.

    `auto` decides once per set (`wants_faces`; `sample` photos are looked at); a test set is extracted whenever
    the training set is faces, as `raydf.predict` does for a run trained on faces."""
    if cfg.data.faces == "off":
        return cfg
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data))
    for key in ("train", "test"):
        spec, root = getattr(cfg.data, key), getattr(cfg.data, f"{key}_root")
        if spec is None or is_face_manifest(spec):
            continue
        if key == "test" and is_face_manifest(cfg.data.train):
            log.info("data.test=%s: faces extracted, as the training set's", spec)
        elif cfg.data.faces == "auto" and not wants_faces(cfg, spec, root, f"data.{key}={spec}", sample):
            continue
        folder = faces_cache_dir(cfg, spec)
        log.info("data.faces=%s: data.%s=%s -> faces in %s", cfg.data.faces, key, spec, folder)
        setattr(cfg.data, key, str(extract_faces(cfg, spec, str(folder), root).manifest))
        setattr(cfg.data, f"{key}_root", None)  # the manifest's crop paths are relative to itself
    return cfg


def wants_faces(
    cfg: Config, spec: str, root: Optional[str], name: str, sample: int = AUTO_SAMPLE, training: bool = True
) -> bool:
    """`data.faces=auto` on one set (folder or CSV; relative CSV paths against `root`): a set holding a video is
    extracted (no photo is looked at); a set of photos when `sample` of them, spread evenly over it, show faces
    small in the frame or off centre (`raydf.data.faces.FramingSurvey`). Logs what it saw and decided, as `name`
    (`training`: a set to train on, else new inputs of a finished run)."""
    try:
        sources = list_sources(spec, root)
    except DataError:  # not a readable set: the normal path reports it, with its own message
        return False
    videos = int(sources["path"].map(is_video).sum())
    if videos:
        log.info("data.faces=auto: %s holds %d video(s): extracting faces", name, videos)
        return True
    paths = sources["path"].iloc[spread_sample(len(sources), sample)].tolist()
    survey = _survey(cfg, paths)
    log.info("data.faces=auto: %s: %s", name, survey.describe(training))
    return survey.extract


# Surveys already made in this process, by their photos (path, size, modification time) and settings: a set is
# looked at once, though `raydf.evaluate` asks for its faces twice (its predictions, then its levels). They are kept
# on disk too (data.cache_dir/face-surveys/), so a second run on the same unchanged set does not run MTCNN again.
_SURVEYS: dict[str, FramingSurvey] = {}


def _survey(cfg: Config, paths: list[str]) -> FramingSurvey:
    settings = face_settings(cfg)
    stats = [(path, *_size_and_time(path)) for path in paths]
    look = {k: v for k, v in settings.to_dict().items() if k in ("detect_size", "min_face", "min_score")}
    key = hashlib.sha1(json.dumps([stats, look], sort_keys=True).encode()).hexdigest()
    file = (Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()) / "face-surveys"
    file = file / f"{key}.json"
    if key not in _SURVEYS:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # absent or damaged: look again
            _SURVEYS[key] = FramingSurvey.from_dict(json.loads(file.read_text()))
    if key not in _SURVEYS:
        start = time.perf_counter()
        extractor = FaceExtractor(settings, batch_size=1)
        _SURVEYS[key] = survey_framing(extractor, paths)
        log.debug("framing survey of %d photo(s) in %.1fs", len(paths), time.perf_counter() - start)
        with contextlib.suppress(OSError):  # a read-only cache folder: the survey is only not kept
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(file, json.dumps(_SURVEYS[key].to_dict()).encode())
    return _SURVEYS[key]


def _size_and_time(path: str) -> tuple[Optional[int], Optional[int]]:
    try:
        st = Path(path).stat()
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def faces_cache_dir(cfg: Config, spec: str) -> Path:
    src = str(Path(spec).expanduser().resolve())
    key = hashlib.sha1(json.dumps([src, face_settings(cfg).to_dict()], sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()
    return root / "faces" / f"{Path(src).stem[:40]}-{key}"


def has_videos(spec: str, root: Optional[str] = None) -> bool:
    """Whether the set `spec` (folder or CSV; relative CSV paths against `root`) lists at least one video."""
    try:
        sources = list_sources(spec, root)
    except DataError:  # not a readable set: the normal path reports it, with its own message
        return False
    return bool(sources["path"].map(is_video).any())


def extract_faces(cfg: Config, src: str, faces_dir: str, root: Optional[str] = None) -> Extraction:
    """Extract the faces of every source of SRC (a CSV's relative paths against `root`, default its folder) into
    FACES_DIR; sources done by an earlier run are kept."""
    settings = face_settings(cfg)
    sources = list_sources(src, root)
    store = FaceStore(faces_dir)
    store.claim(settings)
    sources.insert(0, "key", [source_key(s) for s in sources["path"]])
    todo = sources[[not store.done(k) for k in sources["key"]]].reset_index(drop=True)
    n_videos = int(sum(is_video(s) for s in sources["path"]))
    log.info(
        "faces of %d source(s) (%d video(s), %d photo(s)) into %s%s",
        len(sources),
        n_videos,
        len(sources) - n_videos,
        store.root,
        f"; {len(sources) - len(todo)} already done by an earlier run" if len(todo) < len(sources) else "",
    )
    start = time.time()
    try:
        with ray_session(cfg.ray.address) if len(todo) else contextlib.nullcontext():
            gpus = cfg.faces.gpus_per_actor
            if gpus is None and len(todo):
                gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
            with CountProgress(len(todo), "face extraction", unit="sources") as progress:
                done = extract_on_cluster(
                    todo,
                    store,
                    settings,
                    batch_size=cfg.faces.batch_size,
                    actors=cfg.faces.actors,
                    gpus_per_actor=gpus,
                    on_source=lambda row: progress.update(1),
                )
    except KeyboardInterrupt as stop:
        finished = sum(store.done(k) for k in sources["key"])
        raise Interrupted(
            f"interrupted ({signals.name(stop)}): {finished} of {len(sources)} sources are done and kept in "
            f"{store.root}. Run the same command again to continue with the rest",
            signals.exit_code(stop),
        ) from None
    wall = time.time() - start
    parts = [store.read_part(k) for k in sources["key"]]  # each source's part file, read once
    faces, no_faces = store.write_manifests(parts)
    stats = {
        "src": str(Path(src).expanduser().resolve()),
        "sources": len(sources),
        "videos": n_videos,
        "extracted_now": len(todo),
        "done_before": len(sources) - len(todo),
        "faces": len(faces),
        "sources_without_faces": len(no_faces),
        "frames_used": int(sum(p["frames_used"] for p in parts)),
        "frames_grabbed": int(sum(p["frames_grabbed"] for p in parts)),
        "seconds": round(wall, 2),
        "faces_per_second_now": round(int(done["n_faces"].sum()) / max(wall, 1e-9), 2) if len(done) else 0.0,
        "notes": {p["source"]: p["note"] for p in parts if p.get("note")},
        "sources_per_node": {str(k): int(v) for k, v in done["node"].value_counts().items()} if len(done) else {},
        "sources_per_device": {str(k): int(v) for k, v in done["device"].value_counts().items()} if len(done) else {},
        "settings": settings.to_dict(),
    }
    unused = sum(n for device, n in stats["sources_per_device"].items() if "granted GPU" in device)
    if unused:
        log.warning(
            "%d source(s) ran on the CPU of actors that Ray granted a GPU: torch sees no CUDA device there "
            "(a CPU-only torch build, or no NVIDIA driver). Install a CUDA build of torch on the GPU nodes, or set "
            "faces.gpus_per_actor=0 to extract on the CPUs",
            unused,
        )
    for source, note in list(stats["notes"].items())[:5]:
        log.warning("%s: %s (its readable frames were used)", source, note)
    atomic_write(store.root / "extraction.json", (json.dumps(stats, indent=2) + "\n").encode())
    log.info(
        "%d face crop(s) from %d source(s) in %.1fs; %d source(s) without a face are listed in %s",
        len(faces),
        len(sources),
        wall,
        len(no_faces),
        store.root / NO_FACES,
    )
    return Extraction(store.root, store.root / MANIFEST, faces, no_faces, stats)
