"""`python -m benchmarks.paired`: the AUC difference of two runs scored on the same images, with a paired interval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.paired import compare, paired_auc


def test_a_better_ranking_shows_a_positive_difference_and_a_tie_none():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 150)
    good = labels + rng.normal(0, 0.8, labels.size)  # AUC about 0.81
    worse = good + rng.normal(0, 1.0, labels.size)  # the same scores, blurred: a lower AUC on the same images
    r = paired_auc(labels, good, worse, n=500)
    assert r["auc_a"] > r["auc_b"]
    assert r["diff"] == pytest.approx(r["auc_a"] - r["auc_b"])
    assert 0 < r["ci95"][0] < r["diff"] < r["ci95"][1]
    tie = paired_auc(labels, good, good.copy(), n=200)
    assert tie["diff"] == 0 and tie["ci95"] == [0.0, 0.0]


def _scored_run(root, name, probs, spec):
    folder = root / "evaluate" / name
    folder.mkdir(parents=True)
    (root / "evaluate" / "evaluation.json").write_text(json.dumps({"sets": {name: {"set": str(spec)}}}))
    folder.joinpath("predictions.csv").write_text(
        "image,label,prob_fake\n" + "".join(f"{img},{int(p > 0.5)},{p}\n" for img, p in probs.items())
    )


def test_compare_matches_each_runs_predictions_to_the_sets_labels_by_image(tmp_path):
    data = tmp_path / "set"
    images = {f"{kind}/{i}.png": int(kind == "fake") for kind in ("real", "fake") for i in range(6)}
    for img in images:
        (data / img).parent.mkdir(parents=True, exist_ok=True)
        (data / img).write_bytes(b"")  # only the names are read
    # A ranks every fake above every real (AUC 1); B ranks them the other way round (AUC 0). The rows are written
    # in another order than the set's: matching is by image, not by row.
    _scored_run(tmp_path / "a", "set", {img: 0.2 + 0.6 * y for img, y in reversed(images.items())}, data)
    _scored_run(tmp_path / "b", "set", {img: 0.8 - 0.6 * y for img, y in images.items()}, data)
    r = compare(tmp_path / "a", tmp_path / "b", ["set"], n=100)["sets"]["set"]
    assert (r["auc_a"], r["auc_b"], r["diff"], r["n"]) == (1.0, 0.0, 1.0, 12)

    _scored_run(tmp_path / "c", "set", {img: 0.5 for img in list(images)[:-1]}, data)  # one image not scored
    with pytest.raises(SystemExit, match="12 images in the set, 11 scored by both runs"):
        compare(tmp_path / "a", tmp_path / "c", ["set"], n=10)
