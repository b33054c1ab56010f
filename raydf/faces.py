"""`python -m raydf.faces SRC FACES_DIR [--config FILE] [key=value ...]`: faces out of videos and uncropped photos.

SRC is a folder with real/ and fake/ (photos and videos, mixed) or a CSV `path,label[,group]`; without labels
(a folder of media, a CSV of paths) it is a test set. FACES_DIR gets the crops, `faces.csv` (train on it with
data.train=FACES_DIR/faces.csv), `no_faces.csv` and `extraction.json`. Run it again to continue a stopped one.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from raydf.cli import add_common_args, config_from_args, run_cli


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.faces", description=__doc__)
    parser.add_argument("src", help="folder with real/ and fake/, or a CSV path,label[,group]")
    parser.add_argument("faces_dir", help="output folder (new, or one this command made with the same settings)")
    parser.add_argument("--config", help="YAML file or name in configs/ (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. faces.frames_per_video=16")
    add_common_args(parser)
    return parser.parse_intermixed_args(argv)  # key=value pairs on both sides of a flag (-q, -v)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args.config, args.overrides)
    from raydf.pipelines.faces import extract_faces  # imports torch and Ray: only when there is work to do

    result = extract_faces(cfg, args.src, args.faces_dir)
    s = result.stats
    print(
        f"{s['faces']} face crops from {s['sources']} sources ({s['videos']} videos) in {result.faces_dir}\n"
        f"manifest: {result.manifest}  (train: python -m raydf.train data.train={result.manifest})\n"
        f"sources without a face: {s['sources_without_faces']} (listed in {result.faces_dir / 'no_faces.csv'})"
    )
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
