"""Face extraction against a naive one, and training on extracted faces against training on the whole photos.

    python -m benchmarks.faces [--quick] [--data ../shared/data/ffhq-stylegan-2200] [--out benchmarks/results]

1 extraction speed, on HD videos made from the shared faces (1280x720, faces pasted at ~220 px and moving):
  naive  decode every frame (read: decode + RGB conversion), MTCNN at full resolution, one frame per call
  raydf  FaceExtractor in this process: decodes what reaching the sampled frames needs (PyAV, seeking to
         keyframes where cheaper), converts only those, MTCNN at faces.detect_size, batched (the same sampled
         frames, the same thread count)
  command  `python -m raydf.faces` end to end (Ray start, actor pool of one single-threaded actor per core)
  command_scale: the command on 10, 60 and 250 such videos (--scale-videos); the difference of the smallest and
         the largest run is its rate once started
  Also frames decoded per frame used (frames_grabbed/used) and converted to RGB per frame used.
  reading: frames only (no detection), 32 of 300 frames of 1280x720 H.264 videos at 30 fps with a keyframe
  every 30 frames (phones, streaming) and every 250 (x264's default): OpenCV decoding every frame, against
  raydf's reader choosing frames spread evenly (faces.keyframes=false) and keyframes only (true).
2 crops help: uncropped photos (a shared face at a random place on a 480x360 background), 2-fold CV of
  `python -m raydf.train` on the photos themselves (data.faces=off) against the same command with
  data.faces=on, at the same image size, epochs and folds.
Prints a markdown table and writes `faces[-quick].json` (`--only SECTION ...` re-runs some, keeping the
others). Ratios, not seconds, carry over to other machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

from raydf.config import FacesConfig
from raydf.data.demo_media import load_faces, write_photo, write_video
from raydf.data.faces import FaceExtractor, FaceSettings
from raydf.data.video import frame_indices, read_frames

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ffhq-stylegan-2200"


def make_videos(data: Path, folder: Path, n: int, frames: int) -> list[Path]:
    real = load_faces(sorted((data / "real").glob("*.jpg"))[:n])
    fake = load_faces(sorted((data / "fake").glob("*.jpg"))[:n])
    paths = []
    for label, faces in (("real", real), ("fake", fake)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n // 2):
            path = folder / label / f"video{i}.mp4"
            write_video(path, [faces[i]], frames, width=1280, height=720, face_px=220, seed=i)
            paths.append(path)
    return paths


def naive_extract(paths: list[Path], settings: FaceSettings) -> tuple[int, int]:
    """Every frame read and converted; MTCNN at full resolution on the sampled ones, one frame per call.
    Returns (faces found, frames decoded)."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu", post_process=False)
    faces = decoded = 0
    for path in paths:
        cap = cv2.VideoCapture(str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(frame_indices(n, settings.frames_per_video))
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            decoded += 1
            if index in wanted:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                boxes, probs = mtcnn.detect(rgb)
                if boxes is not None:
                    kept = [b for b, p in zip(boxes, probs) if p >= settings.min_score]
                    faces += min(len(kept), 1)  # the largest face, as keep=largest
            index += 1
        cap.release()
    return faces, decoded


def raydf_extract(paths: list[Path], settings: FaceSettings) -> tuple[int, int, int, int]:
    """Returns (faces, frames used, frames grabbed, frames retrieved) of FaceExtractor over `paths`."""
    extractor = FaceExtractor(settings, device="cpu")
    faces = used = grabbed = 0
    for path in paths:
        result = extractor.extract(str(path))
        faces += len(result.faces)
        used += result.frames_used
        grabbed += result.frames_grabbed
    return faces, used, grabbed, used  # every used frame is retrieved once, and only those


def run_command(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def extraction_section(data: Path, work: Path, quick: bool, env: dict) -> dict:
    n, frames = (4, 48) if quick else (10, 96)
    paths = make_videos(data, work / "videos", n, frames)
    settings = FaceSettings.from_config(FacesConfig(frames_per_video=16, detect_size=640), resize=224)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    naive_faces, naive_decoded = naive_extract(paths, settings)
    naive_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    faces, used, grabbed, retrieved = raydf_extract(paths, settings)
    ours_s = time.perf_counter() - t0
    command_s = run_command(
        [
            "raydf.faces",
            str(work / "videos"),
            str(work / "faces"),
            "faces.frames_per_video=16",
            "faces.size=224",
            "-q",
        ],
        env,
    )
    stats = json.loads((work / "faces" / "extraction.json").read_text())
    return {
        "videos": len(paths),
        "frames_per_video": frames,
        "frames_used": used,
        "naive": {"seconds": naive_s, "faces": naive_faces, "frames_decoded": naive_decoded},
        "raydf_in_process": {
            "seconds": ours_s,
            "faces": faces,
            "frames_grabbed": grabbed,
            "frames_retrieved": retrieved,
        },
        "raydf_command": {"seconds": command_s, "faces": stats["faces"]},
        "faces_per_s": {
            "naive": naive_faces / naive_s,
            "raydf_in_process": faces / ours_s,
            "raydf_command": stats["faces"] / command_s,
        },
        "speedup_in_process": (faces / ours_s) / (naive_faces / naive_s),
        "speedup_command": (stats["faces"] / command_s) / (naive_faces / naive_s),
        "grabbed_per_used": grabbed / used,
        "retrieved_per_used": retrieved / used,
        "naive_decoded_per_used": naive_decoded / used,
    }


def reading_section(data: Path, work: Path, quick: bool) -> dict:
    """Seconds and frames decoded per frame used, reading 32 frames of 300 (no detection)."""
    face = load_faces(sorted((data / "real").glob("*.jpg"))[:1])[0]
    n_videos, used = (2, 32) if quick else (6, 32)
    out = {}
    for gop in (30, 250):
        folder = work / f"h264-gop{gop}"
        folder.mkdir(parents=True)
        paths = []
        for i in range(n_videos):
            paths.append(folder / f"video{i}.mp4")
            write_video(paths[-1], [face], 300, width=1280, height=720, face_px=220, fps=30, seed=i, gop=gop)
        row = {}
        t0 = time.perf_counter()
        decoded = 0
        for path in paths:  # the naive way: every frame decoded and converted
            cap = cv2.VideoCapture(str(path))
            while cap.read()[0]:
                decoded += 1
            cap.release()
        row["naive"] = {"seconds": time.perf_counter() - t0, "decoded": decoded, "used": n_videos * used}
        for mode, keyframes in (("spread", False), ("keyframes", True)):
            t0 = time.perf_counter()
            decoded = got = seeks = 0
            for path in paths:
                frames, stats = read_frames(str(path), used, keyframes=keyframes)
                decoded, got, seeks = decoded + stats.grabbed, got + len(frames), seeks + stats.seeks
            row[mode] = {"seconds": time.perf_counter() - t0, "decoded": decoded, "used": got, "seeks": seeks}
        for r in row.values():
            r["decoded_per_used"] = r["decoded"] / r["used"]
            r["ms_per_frame_used"] = 1000 * r["seconds"] / r["used"]
        out[f"gop{gop}"] = row
    return {"videos": n_videos, "frames": 300, "size": "1280x720", "fps": 30, "frames_asked": used, **out}


def command_scale_section(data: Path, work: Path, quick: bool, env: dict, sizes: list[int]) -> dict:
    """`python -m raydf.faces` on sets of the extraction section's videos of growing size: the difference of the
    smallest and the largest run is the rate once Ray's start and the actors' loading are paid (each run pays
    them once)."""
    sizes = [4, 12] if quick else sorted(sizes)
    runs = {}
    for n in sizes:
        make_videos(data, work / f"scale{n}", n, 96)
        args = [str(work / f"scale{n}"), str(work / f"scale{n}-faces"), "faces.frames_per_video=16", "faces.size=224"]
        seconds = run_command(["raydf.faces", *args, "-q"], env)
        stats = json.loads((work / f"scale{n}-faces" / "extraction.json").read_text())
        runs[n] = {"videos": n, "seconds": seconds, "faces": stats["faces"]}
    small, large = runs[sizes[0]], runs[sizes[-1]]
    marginal = (large["faces"] - small["faces"]) / (large["seconds"] - small["seconds"])
    steps = zip(sizes, sizes[1:])  # the rate between consecutive sizes: does it hold as the set grows?
    return {
        "runs": list(runs.values()),
        "faces_per_s_between": {
            f"{a}-{b}": (runs[b]["faces"] - runs[a]["faces"]) / (runs[b]["seconds"] - runs[a]["seconds"])
            for a, b in steps
        },
        "faces_per_s_end_to_end": {str(n): r["faces"] / r["seconds"] for n, r in runs.items()},
        "faces_per_s_once_started": marginal,
        "start_seconds": small["seconds"] - small["faces"] / marginal,
    }


def crops_section(data: Path, work: Path, quick: bool, env: dict) -> dict:
    n = 150 if quick else 400  # photos per class
    real = sorted((data / "real").glob("*.jpg"))[:n]
    fake = sorted((data / "fake").glob("*.jpg"))[:n]
    src = work / "photos"
    for label, files in (("real", real), ("fake", fake)):
        (src / label).mkdir(parents=True, exist_ok=True)
        for i, face in enumerate(load_faces(files)):
            write_photo(src / label / f"{i:04d}.jpg", face, seed=i + (0 if label == "real" else 10_000))
    common = [
        f"data.train={src}",
        "data.resize=112",
        "data.crop=96",
        "train.folds=2",
        f"train.epochs={4 if quick else 8}",
        "sched.t_max=8",
        "train.batch_size=32",
        "resources.gpus_per_fold=0",
        f"data.cache_dir={work / 'cache'}",
        "-q",
    ]
    out = {}
    for mode in ("off", "on"):
        run_dir = work / f"run-faces-{mode}"
        seconds = run_command(["raydf.train", f"run_dir={run_dir}", f"data.faces={mode}", *common], env)
        summary = json.loads((run_dir / "summary.json").read_text())
        out[f"faces_{mode}"] = {"seconds": seconds, "cv": summary["cv"], "cv_sources": summary.get("cv_sources")}
    return out


SECTIONS = ("extraction", "command_scale", "crops", "reading")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="these sections; the others are kept"
    )
    parser.add_argument(
        "--scale-videos", nargs="+", type=int, default=[10, 60, 250], help="set sizes of the command_scale section"
    )
    args = parser.parse_args()
    path = args.out / f"faces{'-quick' if args.quick else ''}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.only:  # each section records its own date: a partial re-run keeps the others' dates
            if name == "extraction":
                section = extraction_section(args.data, work, args.quick, env)
            elif name == "command_scale":
                section = command_scale_section(args.data, work, args.quick, env, args.scale_videos)
            elif name == "crops":
                section = crops_section(args.data, work, args.quick, env)
            else:
                section = reading_section(args.data, work, args.quick)
            results[name] = {"date": time.strftime("%Y-%m-%d"), **section}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print_results(results)
    print(f"wrote {path}")


def print_results(results: dict) -> None:
    print("| measure | naive / whole photos | raydf | ratio |")
    print("|---|---|---|---|")
    if "extraction" in results:
        e = results["extraction"]
        print(
            f"| faces/s in process ({e['videos']} HD videos, 16 of {e['frames_per_video']} frames) "
            f"| {e['faces_per_s']['naive']:.2f} | {e['faces_per_s']['raydf_in_process']:.2f} "
            f"| {e['speedup_in_process']:.2f}x |"
        )
        print(
            f"| faces/s, python -m raydf.faces end to end | {e['faces_per_s']['naive']:.2f} "
            f"| {e['faces_per_s']['raydf_command']:.2f} | {e['speedup_command']:.2f}x |"
        )
        print(
            f"| frames decoded per frame used | {e['naive_decoded_per_used']:.2f} "
            f"| decoded {e['grabbed_per_used']:.2f}, converted {e['retrieved_per_used']:.2f} | |"
        )
    if "command_scale" in results:
        c = results["command_scale"]
        rates = ", ".join(f"{r:.2f} at {n} videos" for n, r in c["faces_per_s_end_to_end"].items())
        print(f"| faces/s, python -m raydf.faces end to end | | {rates} | |")
        print(f"| faces/s once started (smallest to largest run) | | {c['faces_per_s_once_started']:.2f} | |")
        for span, rate in c.get("faces_per_s_between", {}).items():
            print(f"| faces/s between the runs on {span} videos | | {rate:.2f} | |")
        print(f"| seconds to start (Ray, actors, MTCNN) | | {c['start_seconds']:.1f} | |")
    if "crops" in results:
        off, on = results["crops"]["faces_off"]["cv"], results["crops"]["faces_on"]["cv"]
        print(f"| CV accuracy, uncropped photos | {off['accuracy']:.4f} | {on['accuracy']:.4f} | |")
        print(f"| CV ROC AUC, uncropped photos | {off['auc']:.4f} | {on['auc']:.4f} | |")
    if "reading" in results:
        print_reading(results["reading"])


def print_reading(reading: dict) -> None:
    print(
        f"\n| reading {reading['frames_asked']} of {reading['frames']} frames, {reading['size']} H.264 | decoded per "
        "frame used | ms per frame used | frames used |"
    )
    print("|---|---|---|---|")
    for gop in ("gop30", "gop250"):
        for mode in ("naive", "spread", "keyframes"):
            r = reading[gop][mode]
            print(f"| {gop}, {mode} | {r['decoded_per_used']:.2f} | {r['ms_per_frame_used']:.1f} | {r['used']} |")


if __name__ == "__main__":
    main()
