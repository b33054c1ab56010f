"""`python -m raydf.predict --run RUN_DIR --images DIR_OR_CSV [--out FILE]`: soft vote of a finished run's folds."""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from raydf.cli import add_common_args, run_cli
from raydf import signals
from raydf.errors import ConfigError, Interrupted

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


def predict(run_dir: str, images: str, out: str, image_root: Optional[str] = None,
            address: Optional[str] = None, tta: Optional[bool] = None) -> str:
    """Write `image,label,prob_fake` for `images` with the run's K fold checkpoints (paths or URIs).

    `tta` (horizontal-flip test-time augmentation) defaults to the run's `predict.tta`.
    """
    import ray

    from raydf.catalog import read_test
    from raydf.checkpoint import load_fold_checkpoint
    from raydf.distributed.cluster import check_readable_on_every_node
    from raydf.distributed.session import ray_session
    from raydf.pipeline import predict_paths, read_csv, write_submission
    from raydf.preflight import check_test_set
    from raydf.resume import resume_config
    from raydf.storage import RunStorage

    storage = RunStorage(run_dir)
    cfg = resume_config(str(run_dir))
    missing = [k for k in range(cfg.train.folds) if not storage.exists(f"checkpoints/fold{k}.pt")]
    if missing:
        raise ConfigError(f"{run_dir} is not a finished raydf run: checkpoints of folds {missing} are missing "
                          f"(finish it with python -m raydf.train resume={run_dir})")
    test_df = read_test(images, image_root)
    bad = check_test_set(test_df, cfg.data.decode_threads, cfg.data.on_bad)  # before Ray starts
    # The prior an unreadable image gets: the fraction of fakes among the run's training images.
    prior = float(read_csv(storage, "folds.csv")["label"].mean())
    with ray_session(address or cfg.ray.address):
        check_readable_on_every_node([p for i, p in enumerate(test_df["path"]) if i not in bad], "--images")  # Ray Data decodes them on any node
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        refs = [ray.put({k: v.numpy() for k, v in load_fold_checkpoint(storage, fold)[0].items()})
                for fold in range(cfg.train.folds)]
        readable = [p for i, p in enumerate(test_df["path"]) if i not in bad]
        pred = predict_paths(cfg, readable, refs, gpus_per_actor=gpus, tta=tta)
    write_submission(*RunStorage.for_file(out), test_df, pred, bad, prior)
    log.info("wrote %d predictions of %d folds to %s", len(test_df), cfg.train.folds, out)
    return str(out)


def main(args: argparse.Namespace) -> int:
    out = args.out or f"{args.run.rstrip('/')}/predictions.csv"
    try:
        print(predict(args.run, args.images, out, args.image_root, args.address, args.tta))
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM (raydf.signals): the output is written whole or not at all
        raise Interrupted(f"interrupted ({stop or 'SIGINT'}): nothing was written to {out}; run the same command "
                          f"again to predict", signals.exit_code(stop)) from None
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
