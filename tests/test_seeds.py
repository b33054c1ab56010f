"""Several seeds per fold (train.seeds): K x S fold tasks in one run on the session's local Ray (2 CPUs).

One 2-seed x 2-fold run is shared by the tests that read a finished run; one more is interrupted (Ctrl-C) while
some of its models are finished and others are training, then resumed.
"""

import _thread
import json
import logging
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import checkpoint_prob_fake, tiny_overrides, wait_for

from raydf.config import load_config
from raydf.data.catalog import read_test
from raydf.errors import ConfigError
from raydf.runs.model_key import ModelKey, model_keys
from raydf.training.metrics import classification_metrics

SEEDS = [42, 7]
MODELS = [(42, 0), (42, 1), (7, 0), (7, 1)]  # (seed, fold), in the run's order: seed by seed
# fp32: probabilities are compared with ones computed here to float rounding. A half CPU per fold task: all four
# fit on the session's 2 CPUs at once (each trains with one torch thread).
SEEDS_RUN_EPOCHS = 30  # the shared run's (seeds_run)
SEED_OVERRIDES = ["train.precision=fp32", "train.seeds=[42,7]", "resources.cpus_per_fold=0.5", "predict.explain=0"]


@pytest.fixture(scope="module")
def seeds_run(ray_local, tiny_demo, tmp_path_factory):
    from raydf.pipelines.training import train

    run_dir = tmp_path_factory.mktemp("seeds") / "run"
    # SEEDS_RUN_EPOCHS: a task's training must outlast the start of the other tasks' workers. Ray starts at most as many
    # worker processes at once as the node has CPUs (two here), each several seconds on a loaded machine (importing
    # torch): CI runs saw the fourth task start 7 s after the first had finished with 2 epochs, 8.6 s with 5; a local
    # suite run (2026-12-05) found one idle worker, and the three new ones started their tasks 13.6-14 s after it, when
    # its 15 epochs had been over for 3 s. 30 epochs of one task alone take ~21 s.
    overrides = SEED_OVERRIDES + [f"train.epochs={SEEDS_RUN_EPOCHS}", "train.patience=99"]
    cfg = load_config(None, tiny_overrides(run_dir, tiny_demo) + overrides)
    assert train(cfg) == str(run_dir)
    return run_dir, cfg


def _names(models) -> list[str]:
    return [f"s{s}_fold{k}" for s, k in models]


def test_model_keys_name_a_single_seed_run_as_before_and_several_seeds_by_seed_and_fold():
    one = model_keys(load_config(None, []))
    assert [(k.name, k.label, k.rng_seed) for k in one] == [("fold0", "fold 0", 42), ("fold1", "fold 1", 43)]
    assert one[0].tags() == {"fold": 0}  # rows and events of a single-seed run carry no seed
    several = model_keys(load_config(None, ["train.seeds=[42,7]"]))
    assert [k.name for k in several] == _names(MODELS)
    assert several[3].label == "seed 7 fold 1" and several[3].tags() == {"fold": 1, "seed": 7}
    assert ModelKey.of(several[3].tags()) == several[3] and ModelKey.of({"fold": 1}, 42) == one[1]
    # The models of one fold train on the same rows: their randomness must differ.
    assert len({k.rng_seed for k in several if k.fold == 0}) == 2


@pytest.mark.parametrize("seeds", ["[]", "[7,7]"])
def test_train_seeds_must_be_distinct_and_not_empty(seeds):
    with pytest.raises(ConfigError, match=r"train\.seeds.*distinct seeds"):
        load_config(None, [f"train.seeds={seeds}"])


def test_a_sweep_of_several_seeds_is_refused_before_any_work():
    from raydf.runs.model_key import check_one_seed

    check_one_seed(load_config(None, ["train.seeds=[5]"]))  # one seed: a trial's
    with pytest.raises(ConfigError, match=r"train\.seeds=\[42, 7\]: raydf\.tune trials train one seed.*best\.yaml"):
        check_one_seed(load_config(None, ["train.seeds=[42,7]"]))


def test_progress_lines_name_the_seed_and_the_fold(caplog):
    from raydf.runs.console import FoldProgress

    caplog.set_level(logging.INFO, logger="raydf.runs.console")
    keys = model_keys(load_config(None, ["train.seeds=[42,7]"]))
    with FoldProgress(keys, 3, live=False) as display:
        display([{"type": "start", **keys[3].tags(), "time": time.time(), "node_id": "abcdef0123456789", "pid": 9}])
        display([{"type": "start", "fold": 1, "time": time.time()}])  # no seed: not a model of this run
    lines = [r.getMessage() for r in caplog.records if r.name == "raydf.runs.console"]
    assert lines == ["seed 7 fold 1 started (node abcdef01, pid 9)"]


def test_four_fold_tasks_train_at_once_each_with_its_own_files(seeds_run):
    run_dir, _ = seeds_run
    summary = json.loads((run_dir / "summary.json").read_text())
    models = summary["folds"]
    assert [(f["seed"], f["fold"]) for f in models] == MODELS
    # All four ran at the same time: each started before any finished, in four worker processes.
    assert max(f["started_at"] for f in models) < min(f["finished_at"] for f in models)
    assert len({f["pid"] for f in models}) == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(f"{n}.pt" for n in _names(MODELS))
    for name in _names(MODELS):
        assert (run_dir / "state" / f"{name}.pt").is_file() and (run_dir / "tensorboard" / name).is_dir()
    history = pd.read_csv(run_dir / "history.csv")
    assert sorted(zip(history["seed"], history["fold"], history["epoch"])) == sorted(
        m + (e,) for m in MODELS for e in range(1, SEEDS_RUN_EPOCHS + 1)
    )
    # The two models of a fold share its rows but not their weights.
    w42, w7 = (torch.load(run_dir / f"checkpoints/s{s}_fold0.pt", weights_only=True) for s in SEEDS)
    assert (w42["meta"]["seed"], w7["meta"]["seed"]) == (42, 7) and w42["meta"]["val_index"] == w7["meta"]["val_index"]
    assert any(not torch.equal(w42["state_dict"][k], w7["state_dict"][k]) for k in w42["state_dict"])
    report = (run_dir / "report.md").read_text()
    assert "4 models (2 folds x 2 seeds)" in report and "cross-validation, seed 7 alone" in report


def test_oof_of_an_image_is_the_mean_of_its_folds_two_models(seeds_run):
    run_dir, _ = seeds_run
    oof = pd.read_csv(run_dir / "oof.csv")
    assert oof[["path", "label", "fold"]].equals(pd.read_csv(run_dir / "folds.csv")[["path", "label", "fold"]])
    for k, rows in oof.groupby("fold"):
        per_seed = checkpoint_prob_fake(run_dir, rows["path"], names=[f"s{s}_fold{k}" for s in SEEDS])  # (2, N)
        np.testing.assert_allclose(rows["prob_fake"], per_seed.mean(0), rtol=0, atol=1e-6, err_msg=f"fold {k}")
        for s, p in zip(SEEDS, per_seed):
            np.testing.assert_allclose(rows[f"prob_fake_s{s}"], p, rtol=0, atol=1e-6)
        assert np.abs(per_seed[0] - per_seed[1]).max() > 20e-6  # the seeds' models differ: the mean is checked
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cv"] == pytest.approx(classification_metrics(oof["label"], oof["prob_fake"]))
    assert set(summary["cv_seeds"]) == {"42", "7"}


def test_submission_is_the_mean_of_the_four_models(seeds_run, tiny_demo):
    from scipy.special import expit, logit

    from raydf.pipelines.prediction import load_finished_run

    run_dir, _ = seeds_run
    mean = checkpoint_prob_fake(run_dir, read_test(tiny_demo.test)["path"], names=_names(MODELS)).mean(0)
    # The run's calibrated vote: the logit of that mean over the temperature fitted to the 4-model vote (T = 1, the
    # plain mean, when the fit fell back)
    calibration = json.loads((run_dir / "calibration.json").read_text())
    t = calibration["temperature"] if calibration["method"] == "temperature" else 1.0
    assert calibration["pool"] == "mean_prob"  # the run has a test set: the models' spread is measured there
    expected = expit(logit(np.clip(mean.astype(np.float64), 1e-7, 1 - 1e-7)) / t)
    sub = pd.read_csv(run_dir / "submission.csv")
    np.testing.assert_allclose(sub["prob_fake"], expected, rtol=0, atol=1e-6)
    assert expected.std() > 20e-6
    # raydf.predict, evaluate and serve load the run's models through this one function: all four, in run order.
    _, checkpoints = load_finished_run(str(run_dir))
    assert [(meta["seed"], meta["fold"]) for _, meta in checkpoints] == MODELS


def test_an_interrupted_run_resumes_without_touching_its_finished_models(ray_local, tiny_demo, tmp_path):
    """Ctrl-C while some models are finished and others train; the resumed run reads the finished ones back (their
    checkpoint files unchanged) and continues the others from their last saved epoch."""
    from raydf.pipelines.training import RunInterrupted, train
    from raydf.runs.resume import resume_config

    run_dir = tmp_path / "run"
    # One CPU per task: two models at a time, so some finish while others still train; 20 short epochs each (about
    # 0.25 s each), so the stop lands while the last two still train: the Ctrl-C reaches the folds through the
    # driver's wait (up to 0.5 s) and the tasks' stop polls (0.5 s). (This test once failed in CI runs because an
    # earlier test's Tune sweep in the same process had left Tune's SIGINT handler in place: raydf.signals now
    # puts it back.)
    overrides = tiny_overrides(run_dir, tiny_demo) + SEED_OVERRIDES + ["data.test=null", "train.epochs=20"]
    cfg = load_config(None, overrides + ["train.patience=99", "resources.cpus_per_fold=1"])
    checkpoints, states = run_dir / "checkpoints", run_dir / "state"
    finished: dict[str, tuple[bytes, int]] = {}

    def interrupt_mid_run():
        def mid_run():
            done = {p.stem for p in checkpoints.glob("*.pt")} if checkpoints.is_dir() else set()
            training = {p.stem for p in states.glob("s*_fold?.pt")} - done if states.is_dir() else set()
            return done if done and training else None

        if wait_for(mid_run, timeout=300):
            for name in mid_run() or ():
                path = checkpoints / f"{name}.pt"
                finished[name] = (path.read_bytes(), path.stat().st_mtime_ns)
            _thread.interrupt_main()  # what Ctrl-C does to the driver

    interrupter = threading.Thread(target=interrupt_mid_run)
    interrupter.start()
    try:
        with pytest.raises(RunInterrupted, match="resume="):
            train(cfg)
    finally:
        interrupter.join()
    assert finished and len(finished) < len(MODELS)
    unfinished = set(_names(MODELS)) - {p.stem for p in checkpoints.glob("*.pt")}
    midway = {p.stem for p in states.glob("s*_fold?.pt")} & unfinished  # an epoch saved, the model not finished
    assert midway and not (run_dir / "summary.json").exists()

    assert train(resume_config(str(run_dir), None, ["resources.cpus_per_fold=0.5"])) == str(run_dir)
    for name, (data, mtime) in finished.items():
        path = checkpoints / f"{name}.pt"
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, name
    models = {f"s{f['seed']}_fold{f['fold']}": f for f in json.loads((run_dir / "summary.json").read_text())["folds"]}
    assert list(models) == _names(MODELS)
    assert all(f["epochs_run"] == 20 for f in models.values())
    for name in midway:
        assert models[name]["resumed_from_epoch"] >= 1 and models[name]["attempts"] == 2, name
    for name in finished:
        assert models[name]["resumed_from_epoch"] is None and models[name]["attempts"] == 1, name
