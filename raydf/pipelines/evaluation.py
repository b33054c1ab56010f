"""Scoring a finished run on other labelled sets (cross-data-set evaluation): metrics with bootstrap confidence
intervals, per image (or face) and per video/photo where the set holds them, and their ROC curves side by side."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from raydf.errors import DataError

log = logging.getLogger(__name__)


def set_name(spec: str) -> str:
    """A short name for a set: its folder's or CSV's name (`data/celeb-df/test.csv` -> `celeb-df-test`)."""
    path = Path(str(spec).rstrip("/"))
    return f"{path.parent.name}-{path.stem}" if path.suffix else path.name


def evaluate(
    run_dir: str,
    sets: Sequence[str],
    out_dir: Optional[str] = None,
    address: Optional[str] = None,
    bootstrap: int = 1000,
) -> Path:
    """Predict every labelled set in `sets` with the run's folds and write OUT_DIR (default RUN_DIR/evaluate):
    `<set>/predictions.csv` (+ `_faces.csv`), `evaluation.json` and `roc.png`. Returns the JSON's path."""
    from raydf.config import load_config
    from raydf.data.catalog import read_test
    from raydf.data.face_store import is_face_manifest, read_manifest
    from raydf.pipelines.prediction import faces_file, faces_of, predict
    from raydf.runs.plots import roc_sets
    from raydf.runs.submission import source_labels
    from raydf.training.metrics import bootstrap_metrics

    out = Path(out_dir or Path(run_dir) / "evaluate")
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(Path(run_dir) / "config.yaml")
    results: dict[str, dict] = {}
    curves: dict[str, pd.DataFrame] = {}
    for spec in sets:
        name = set_name(spec)
        folder = out / name
        folder.mkdir(exist_ok=True)
        pred_file = folder / "predictions.csv"
        predict(run_dir, spec, str(pred_file), address=address)
        pred = pd.read_csv(pred_file, keep_default_na=False)
        faces_spec = faces_of(cfg, spec, None)  # found done by predict: the manifest when the set has faces
        levels: dict[str, pd.DataFrame] = {}
        if is_face_manifest(faces_spec):
            manifest, no_faces = read_manifest(faces_spec)
            truth = source_labels(manifest, no_faces).reindex(pred["image"].astype(str))
            levels["per video/photo"] = pd.DataFrame({"label": truth.to_numpy(), "prob_fake": pred["prob_fake"]})
            per_face = pd.read_csv(faces_file(str(pred_file)))
            levels["per face"] = pd.DataFrame(
                {"label": manifest["label"].to_numpy(), "prob_fake": per_face["prob_fake"]}
            )
        else:
            table = read_test(spec)
            if "label" not in table.columns:
                raise DataError(
                    f"{spec}: its labels are not known; evaluation needs a labelled set (real/ and fake/ "
                    f"folders, or a CSV with a label column)"
                )
            levels["per image"] = pd.DataFrame({"label": table["label"].to_numpy(), "prob_fake": pred["prob_fake"]})
        results[name] = {"set": str(spec)}
        for level, frame in levels.items():
            frame = frame.dropna()
            results[name][level] = dict(
                n=len(frame), **bootstrap_metrics(frame["label"], frame["prob_fake"], bootstrap)
            )
        main_level = next(iter(levels))
        curves[f"{name} ({main_level})"] = levels[main_level].dropna()
        log.info("%s: %s", name, _line(results[name][main_level]))
    (out / "evaluation.json").write_text(
        json.dumps({"run": str(run_dir), "bootstrap": bootstrap, "sets": results}, indent=2)
    )
    roc_sets(curves, out / "roc.png", unit="rows")
    return out / "evaluation.json"


def _line(m: dict) -> str:
    def one(key: str) -> str:
        v = m[key]
        if v["value"] is None:
            return f"{key} n/a"
        ci = f" [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" if v["ci95"] else ""
        return f"{key} {v['value']:.4f}{ci}"

    return f"n={m['n']}  " + "  ".join(one(k) for k in ("auc", "accuracy", "log_loss", "ap", "eer", "ece", "brier"))


def table(path: Path) -> str:
    """The evaluation as lines to print: one per set and level, metrics with their 95% intervals."""
    data = json.loads(Path(path).read_text())
    lines = []
    for name, result in data["sets"].items():
        for level, m in result.items():
            if isinstance(m, dict):
                lines.append(f"{name} {level}: {_line(m)}")
    return "\n".join(lines)
