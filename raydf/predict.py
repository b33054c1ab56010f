"""`python -m raydf.predict --run RUN_DIR --images DIR_OR_CSV [--out FILE] [--tta]`: a finished run's soft vote."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from raydf.cli import add_common_args, run_cli
from raydf.config import load_config
from raydf.errors import ConfigError

log = logging.getLogger(__name__)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raydf.predict", description=__doc__)
    parser.add_argument("--run", required=True, help="a finished run directory (has checkpoints/fold*.pt)")
    parser.add_argument("--images", required=True, help="folder of images, CSV of paths, or a Kaggle template")
    parser.add_argument("--image-root", help="folder the CSV's relative paths resolve against (default: the CSV's)")
    parser.add_argument("--out", help="submission CSV to write (default: RUN_DIR/predictions.csv)")
    parser.add_argument("--address", help="Ray address of a running cluster (default: the run's ray.address)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="also predict each image flipped left-right and average (default: the run's predict.tta)")
    add_common_args(parser)
    return parser.parse_args(argv)


def predict(run_dir: Path, images: str, out: Path, image_root: Optional[str] = None,
            address: Optional[str] = None, tta: Optional[bool] = None) -> Path:
    """Write `image,label,prob_fake` for `images` with the run's K fold checkpoints.

    `tta` (horizontal-flip test-time augmentation) defaults to the run's `predict.tta`.
    """
    import ray

    from raydf.catalog import read_test
    from raydf.checkpoint import load_fold_checkpoint
    from raydf.distributed.session import ray_session
    from raydf.pipeline import predict_paths, write_submission

    config_file = run_dir / "config.yaml"
    ckpts = sorted((run_dir / "checkpoints").glob("fold*.pt"))
    if not config_file.is_file() or not ckpts:
        raise ConfigError(f"{run_dir} is not a finished raydf run (needs config.yaml and checkpoints/fold*.pt)")
    cfg = load_config(config_file)
    test_df = read_test(images, image_root)
    with ray_session(address or cfg.ray.address):
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        refs = [ray.put({k: v.numpy() for k, v in load_fold_checkpoint(p)[0].items()}) for p in ckpts]
        pred = predict_paths(cfg, test_df["path"].tolist(), refs, gpus_per_actor=gpus, tta=tta)
    write_submission(out, test_df, pred)
    log.info("wrote %d predictions of %d folds to %s", len(pred), len(ckpts), out)
    return out


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    out = Path(args.out) if args.out else run_dir / "predictions.csv"
    print(predict(run_dir, args.images, out, args.image_root, args.address, args.tta))
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
