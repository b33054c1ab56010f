"""End to end on a real local Ray instance: fold tasks in parallel, checkpoints, soft vote, summary."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_T, assert_oof_matches_checkpoints, checkpoint_prob_fake, separable_images, tiny_overrides
from scipy.special import expit, logit

from raydf.config import load_config
from raydf.data.catalog import read_test
from raydf.errors import ConfigError

FOLD_KEYS = {
    "fold",
    "best_epoch",
    "val_loss",
    "val_acc",
    "epochs_run",
    "started_at",
    "finished_at",
    "node_id",
    "pid",
    "attempts",
    "resumed_from_epoch",
}
METRIC_KEYS = {"accuracy", "auc", "log_loss", "ap", "eer", "ece", "brier"}
# What a 1-epoch run has written when its driver stops after fold 0 finished and fold 1 saved its epoch, before the
# driver got fold 1's result: its inputs, fold 0's checkpoint and both folds' per-epoch state.
WRITTEN_BEFORE_FOLD1_ENDS = {
    "config.yaml",
    "folds.csv",
    "bad_inputs.csv",
    "duplicates.csv",
    "checkpoints/fold0.pt",
    "state/fold0.pt",
    "state/fold0.attempt.json",
    "state/fold1.pt",
    "state/fold1.attempt.json",
}


def test_run_directory_follows_the_contract(finished_run, tiny_demo):
    run_dir, cfg = finished_run
    for name in (
        "config.yaml",
        "folds.csv",
        "oof.csv",
        "submission.csv",
        "summary.json",
        "checkpoints/fold0.pt",
        "checkpoints/fold1.pt",
    ):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / "config.yaml").train.epochs == 1  # the resolved config loads back

    summary = json.loads((run_dir / "summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    for f in summary["folds"]:
        assert FOLD_KEYS <= set(f) and f["attempts"] == 1 and f["resumed_from_epoch"] is None
        assert f["epochs_run"] == 1 and f["best_epoch"] == 1 and f["finished_at"] > f["started_at"]
    assert set(summary["cv"]) == METRIC_KEYS and set(summary["test"]) == METRIC_KEYS

    folds = pd.read_csv(run_dir / "folds.csv")
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(folds) == len(oof) == 64 and sorted(folds["fold"].unique()) == [0, 1]
    assert oof["prob_fake"].between(0, 1).all()  # every training image has an out-of-fold prediction
    sub = pd.read_csv(run_dir / "submission.csv")
    assert list(sub.columns) == ["image", "label", "prob_fake"]
    assert sub["image"].tolist() == read_test(tiny_demo.test)["image"].tolist()  # the test table's order
    threshold = summary["threshold"]["value"]  # youden, chosen on the out-of-fold data (conftest.finished_run)
    assert summary["threshold"]["mode"] == "youden" and threshold != 0.5
    assert (sub["label"] == (sub["prob_fake"] > threshold)).all()


def test_distributed_soft_vote_equals_single_process_vote(finished_run, tiny_demo):
    """The submission is the calibrated soft vote: sigmoid of the logit of the folds' mean P(fake) over the run's
    temperature (calibration.json), computed here from each fold's checkpoint."""
    run_dir, cfg = finished_run
    assert cfg.train.precision == "fp32"  # bf16 results depend slightly on how a batch is split: no tight check
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert calibration["method"] == "temperature" and calibration["temperature"] == TINY_T
    folds = checkpoint_prob_fake(run_dir, read_test(tiny_demo.test)["path"])
    expected = expit(logit(folds.astype(np.float64).mean(0)) / TINY_T)
    sub = pd.read_csv(run_dir / "submission.csv")
    atol = 1e-6  # fp32 agrees to 6e-8 here (different batches, memory format and thread count)
    np.testing.assert_allclose(sub["prob_fake"], expected, rtol=0, atol=atol)
    # The images' probabilities differ by far more than the tolerance (std ~1.4e-4 even after one epoch), so rows
    # in the wrong order would fail the comparison.
    assert expected.std() > 20 * atol
    assert np.abs(expected - folds.mean(0)).max() > 100 * atol  # the uncalibrated vote would not pass


def test_an_old_run_without_calibration_predicts_as_before_and_another_runs_file_is_refused(
    finished_run, tiny_demo, tmp_path
):
    """A run made before calibration existed (no calibration.json) predicts the plain mean of its folds' P(fake),
    cut at 0.5; a calibration.json fitted on another run's out-of-fold data is refused, naming the file."""
    from raydf.pipelines.prediction import predict

    run_dir, _ = finished_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("calibration.json", "test_models.csv", "tensorboard"))
    out = pd.read_csv(predict(str(old), str(tiny_demo.test), str(tmp_path / "old.csv")))
    expected = checkpoint_prob_fake(old, read_test(tiny_demo.test)["path"]).mean(0)
    np.testing.assert_allclose(out["prob_fake"], expected, rtol=0, atol=1e-6)
    assert (out["label"] == (out["prob_fake"] > 0.5)).all()

    other = json.loads((run_dir / "calibration.json").read_text())
    from raydf.inference.calibration import Calibration, calibration_json

    body = {k: v for k, v in other.items() if k not in ("run", "checksum")}
    (old / "calibration.json").write_text(calibration_json(Calibration.from_dict(body), "0123456789abcdef"))
    with pytest.raises(ConfigError, match=f"{old / 'calibration.json'} belongs to another run"):
        predict(str(old), str(tiny_demo.test), str(tmp_path / "refused.csv"))
    assert not (tmp_path / "refused.csv").exists()


def test_oof_rows_are_each_folds_checkpoint_predictions(finished_run):
    """oof.csv's row for an image is P(fake) under the saved weights of the fold that held it out."""
    run_dir, _ = finished_run
    assert_oof_matches_checkpoints(run_dir)


def test_oof_matches_the_checkpoints_after_a_resume(finished_run, tmp_path):
    """A driver stopped after fold 0's checkpoint, before fold 1's: the resumed run's oof.csv takes fold 0 from its
    checkpoint and fold 1 from its saved state (its best weights and their probabilities), each row from its own
    fold's weights."""
    from raydf.pipelines.training import train
    from raydf.runs.resume import resume_config

    run_dir, _ = finished_run
    resumed = tmp_path / "run"
    shutil.copytree(run_dir, resumed)
    for path in sorted(resumed.rglob("*"), reverse=True):  # files before their folders
        if path.is_file() and path.relative_to(resumed).as_posix() not in WRITTEN_BEFORE_FOLD1_ENDS:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    assert train(resume_config(str(resumed))) == str(resumed)
    summary = json.loads((resumed / "summary.json").read_text())
    fold0_before = json.loads((run_dir / "summary.json").read_text())["folds"][0]
    assert summary["folds"][0] == fold0_before  # read back, not trained again
    assert summary["folds"][1]["resumed_from_epoch"] == 1 and summary["folds"][1]["attempts"] == 2
    assert_oof_matches_checkpoints(resumed)


def test_fold_task_requests_a_logical_gpu(ray_local, tiny_demo, tmp_path):
    """With resources.gpus_per_fold=0.5 both folds share the one logical GPU; each task is granted GPU 0."""
    from raydf.distributed.folds import run_folds
    from raydf.distributed.session import fold_resources

    cfg = load_config(None, tiny_overrides(tmp_path / "gpu", tiny_demo) + ["resources.gpus_per_fold=0.5"])
    resources = fold_resources(cfg)
    assert resources["num_gpus"] == 0.5
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 96, 96, 3), dtype=np.uint8)
    labels = np.arange(40) % 2
    splits = {0: (np.arange(20, 40), np.arange(0, 20)), 1: (np.arange(0, 20), np.arange(20, 40))}
    results = run_folds(ray_local.put(images), ray_local.put(labels), splits, cfg, resources)
    for _, info in results.values():
        assert info["gpu_ids"] == ["0"]
        assert info["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_impossible_gpu_request_is_refused(ray_local, tiny_demo, tmp_path):
    from raydf.distributed.session import fold_resources

    cfg = load_config(None, tiny_overrides(tmp_path / "x", tiny_demo) + ["resources.gpus_per_fold=2"])
    with pytest.raises(ConfigError, match=r"resources\.gpus_per_fold=2.*largest node has 1 GPU"):
        fold_resources(cfg)


@pytest.mark.parametrize("vote", ["one task", "actor pool"])
def test_predict_reproduces_the_submission(finished_run, tiny_demo, tmp_path, monkeypatch, caplog, vote):
    """Both ways the soft vote runs give the run's submission: one Ray task for a small set (the tiny test set's 32
    images, as the run voted them), a Ray Data actor pool above raydf.distributed.inference.SMALL_SET images."""
    from raydf.distributed import inference
    from raydf.pipelines.prediction import predict

    if vote == "actor pool":
        monkeypatch.setattr(inference, "SMALL_SET", 0)
    run_dir, _ = finished_run
    with caplog.at_level("INFO", logger="raydf.distributed.inference"):
        out = predict(str(run_dir), str(tiny_demo.test), str(tmp_path / "pred.csv"))
    said = " ".join(r.getMessage() for r in caplog.records if r.name == "raydf.distributed.inference")
    assert ("in one task" in said) == (vote == "one task") and ("actor(s)" in said) == (vote == "actor pool"), said
    predicted, submission = pd.read_csv(out), pd.read_csv(run_dir / "submission.csv")
    pd.testing.assert_frame_equal(predicted[["image", "label"]], submission[["image", "label"]])
    np.testing.assert_allclose(predicted["prob_fake"], submission["prob_fake"], rtol=0, atol=1e-6)


def test_predict_with_flip_tta_changes_the_probabilities_and_stays_a_valid_submission(
    finished_run, tiny_demo, tmp_path
):
    from raydf.predict import main, parse_args

    run_dir, _ = finished_run
    out = tmp_path / "tta.csv"
    assert main(parse_args(["--run", str(run_dir), "--images", str(tiny_demo.test), "--out", str(out), "--tta"])) == 0
    tta, plain = pd.read_csv(out), pd.read_csv(run_dir / "submission.csv")
    assert list(tta.columns) == ["image", "label", "prob_fake"] and tta["image"].tolist() == plain["image"].tolist()
    threshold = json.loads((run_dir / "calibration.json").read_text())["threshold"]  # the run's cut
    assert tta["prob_fake"].between(0, 1).all() and (tta["label"] == (tta["prob_fake"] > threshold)).all()
    assert not np.allclose(tta["prob_fake"], plain["prob_fake"], rtol=0, atol=1e-6)


def test_predict_explain_writes_heatmaps_of_the_most_confident_images(finished_run, tiny_demo, tmp_path):
    """--explain N: Grad-CAM PNGs of the N most surely fake and N most surely real images, listed in index.csv in
    order of confidence with the probabilities the predictions file has."""
    from raydf.predict import main, parse_args

    run_dir, cfg = finished_run
    out = tmp_path / "pred.csv"
    argv = ["--run", str(run_dir), "--images", str(tiny_demo.test), "--out", str(out), "--explain", "3"]
    assert main(parse_args(argv)) == 0
    pred = pd.read_csv(out).assign(path=read_test(tiny_demo.test)["path"].to_numpy())
    index = pd.read_csv(tmp_path / "pred_explain" / "index.csv")
    fakes = pred[pred["prob_fake"] > 0.5].sort_values("prob_fake", ascending=False).head(3)
    reals = pred[pred["prob_fake"] <= 0.5].sort_values("prob_fake").head(3)
    assert index[index["kind"] == "fake"]["image"].tolist() == fakes["path"].tolist()
    assert index[index["kind"] == "real"]["image"].tolist() == reals["path"].tolist()
    assert len(index) == len(fakes) + len(reals) > 0
    np.testing.assert_allclose(index["prob_fake"], pd.concat([fakes, reals])["prob_fake"], atol=1e-6)
    for name in index["heatmap"]:
        from PIL import Image

        png = Image.open(tmp_path / "pred_explain" / name)
        k = -(-256 // cfg.data.crop)  # enlarged to at least 256 px high, to be readable in a report
        assert png.size == (k * (2 * cfg.data.crop + 4), k * cfg.data.crop)  # the model's input beside its heatmap


def test_the_report_shows_the_heatmaps_of_the_test_set(finished_run):
    run_dir, _ = finished_run
    report = (run_dir / "report.md").read_text()
    index = pd.read_csv(run_dir / "explain" / "index.csv")
    assert "## Where the models look" in report and len(index) > 0
    for name in index["heatmap"]:
        assert f"](explain/{name})" in report and (run_dir / "explain" / name).is_file()


def _write_separable_set(root, n_train: int, n_test: int, size: int):
    """`separable_images` as PNG files: a training folder (real/, fake/) and a test CSV path,label of other images."""
    import cv2

    for part, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = separable_images(n, size, seed)
        rows = []
        for i, (image, label) in enumerate(zip(images, labels)):
            rel = f"train/{'fake' if label else 'real'}/{i:04d}.png" if part == "train" else f"test/{i:04d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            rows.append((rel, label))
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(root / "test.csv", index=False)
    return root / "train", root / "test.csv"


@pytest.mark.slow
def test_a_short_run_learns_separable_data(ray_local, tmp_path):
    """Through the default path (the fast training augmentation, the run's automatic precision, the soft vote) a
    short run tells the fakes from the reals: CV AUC and test accuracy far above chance. A broken augmentation,
    labels mixed up, or untrained weights in the vote leave them at chance."""
    from raydf.pipelines.training import train

    train_dir, test_csv = _write_separable_set(tmp_path / "data", n_train=128, n_test=32, size=96)
    run_dir = tmp_path / "run"
    # Batches of 8: eval-mode BatchNorm needs about 30 steps before the probabilities are calibrated (with batches
    # of 16 a run this short ranks the images right, AUC ~1, but scores every one on the same side of 0.5).
    cfg = load_config(
        None,
        [
            f"run_dir={run_dir}",
            f"data.train={train_dir}",
            f"data.test={test_csv}",
            "data.resize=96",
            "data.crop=80",
            "train.folds=2",
            "train.epochs=6",
            "sched.t_max=6",
            "train.patience=6",
            "train.batch_size=8",
            "train.eval_batch_size=32",
            "model.dropout=0.2",
            "predict.batch_size=16",
            "resources.gpus_per_fold=0",
        ],
    )
    assert cfg.train.augment and cfg.train.fast_augment  # the default training transform: FastTrainTransform
    train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    # Seen over train.seed 42, 7 and 123: CV and test AUC and accuracy all 1.0, log loss 0.001-0.008 (with 5 epochs
    # too, log loss <= 0.05). Chance is 0.5, and so is the accuracy of a run that has not learnt enough (every
    # probability on one side of 0.5). Broken on purpose: a training transform returning noise gave CV AUC 0.31,
    # training labels taken from other rows 0.54.
    assert summary["cv"]["auc"] > 0.9 and summary["cv"]["accuracy"] > 0.8
    assert summary["test"]["accuracy"] > 0.8 and summary["test"]["auc"] > 0.9
    # The folds trained at the same time, each in its own worker. Checked on this run, whose folds take ~40 s each:
    # a 1-epoch tiny fold (~0.6 s) can finish before the other's worker gets a core on a loaded 2-core machine
    # (seen once in CI: the second fold started 0.17 s after the first finished).
    folds = summary["folds"]
    assert max(f["started_at"] for f in folds) < min(f["finished_at"] for f in folds)
    assert folds[0]["pid"] != folds[1]["pid"]


def test_a_run_on_reals_alone_with_self_blended_fakes_trains_predicts_and_reports(ray_local, tiny_demo, tmp_path):
    """data.synthetic_fakes=only: the folds learn from the real images and their self-blended fakes; the labelled
    fakes are still scored out of fold, the test set is predicted, and the report shows what was synthesised."""
    from raydf.pipelines.training import train

    run_dir = tmp_path / "run"
    overrides = ["data.synthetic_fakes=only", "synth.share=0.5", "train.batch_size=8"]  # ~16 reals per fold
    cfg = load_config(None, tiny_overrides(run_dir, tiny_demo) + overrides)
    train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(oof) == 64 and set(oof["label"]) == {0, 1} and oof["prob_fake"].between(0, 1).all()
    assert set(summary["cv"]) >= {"auc", "accuracy"} and (run_dir / "submission.csv").is_file()
    # The validation reals' self-blended fakes, scored by their fold's best weights: what calibration falls back
    # on when the labelled rows hold one class only.
    blended = pd.read_csv(run_dir / "oof_blended.csv")
    reals = oof[oof["label"] == 0]
    assert sorted(blended["path"]) == sorted(reals["path"]) and (blended["label"] == 1).all()
    assert blended["prob_fake"].between(0, 1).all() and (run_dir / "calibration.json").is_file()
    assert "![self-blended fakes](synthetic_fakes.png)" in (run_dir / "report.md").read_text()
    from PIL import Image

    assert Image.open(run_dir / "synthetic_fakes.png").size[1] > 600  # six rows of faces


def test_evaluate_scores_the_run_on_other_sets_with_confidence_intervals(finished_run, tiny_demo, tmp_path):
    """raydf.evaluate on two labelled sets: the test set's metrics are the run's own test metrics (the same soft
    vote), each with a 95% bootstrap interval around it, and both sets' ROC curves are drawn."""
    from raydf.evaluate import main, parse_args

    run_dir, _ = finished_run
    out = tmp_path / "eval"
    argv = ["--run", str(run_dir), "--data", str(tiny_demo.test), "--data", str(tiny_demo.train)]
    assert main(parse_args([*argv, "--out", str(out), "--bootstrap", "200"])) == 0
    result = json.loads((out / "evaluation.json").read_text())["sets"]
    test_name = next(name for name, r in result.items() if r["set"] == str(tiny_demo.test))
    train_name = next(name for name, r in result.items() if r["set"] == str(tiny_demo.train))
    run_test = json.loads((run_dir / "summary.json").read_text())["test"]
    per_image = result[test_name]["per image"]
    assert per_image["n"] == 32 and result[train_name]["per image"]["n"] == 64
    for key in ("accuracy", "auc", "log_loss", "ap", "eer", "ece", "brier"):
        assert per_image[key]["value"] == pytest.approx(run_test[key], abs=1e-6), key
        low, high = per_image[key]["ci95"]
        assert low <= per_image[key]["value"] <= high and high - low > 0, key
    pd.testing.assert_frame_equal(
        pd.read_csv(out / test_name / "predictions.csv"), pd.read_csv(run_dir / "submission.csv")
    )
    assert (out / "roc.png").stat().st_size > 0
