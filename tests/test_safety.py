"""What a run refuses or repairs: a used run_dir, a corrupt fold checkpoint, a test image changed mid-run, predicting
with an unfinished run.

Named to run after test_ray_pipeline.py: it runs a soft vote, whose inference actors end pool workers (see
test_real_data_checks.py).
"""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
import torch
from conftest import tiny_overrides

from raydf.config import load_config, to_yaml
from raydf.errors import ConfigError, DataError
from raydf.pipelines.training import train
from raydf.runs.resume import resume_config


def _files(root) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


def _copy_run(finished_run, tmp_path):
    """A copy of the shared finished run, to damage without touching the original."""
    run_dir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_a_used_run_dir_is_refused_and_left_untouched(finished_run, tiny_demo):
    run_dir, _ = finished_run
    before = _files(run_dir)
    cfg = load_config(None, tiny_overrides(run_dir, tiny_demo))  # a new run into the finished run's directory
    where = re.escape(str(run_dir))
    with pytest.raises(ConfigError, match=rf"run_dir {where} already exists and is not empty: .*resume={where}"):
        train(cfg)
    assert _files(run_dir) == before


def test_an_unreadable_fold_checkpoint_is_rebuilt_on_resume(finished_run, tmp_path, caplog):
    """A truncated checkpoints/fold1.pt (a full disk, a bad copy): resuming trains the fold again from its last
    saved epoch, which here is its last epoch, so the rebuilt checkpoint holds the same best weights."""
    run = _copy_run(finished_run, tmp_path)
    ckpt = run / "checkpoints" / "fold1.pt"
    original = torch.load(ckpt, weights_only=True)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert train(resume_config(str(run))) == str(run)
    assert "fold 1: checkpoint" in caplog.text and str(ckpt) in caplog.text and "unreadable" in caplog.text
    rebuilt = torch.load(ckpt, weights_only=True)
    assert rebuilt["state_dict"].keys() == original["state_dict"].keys()
    for name, tensor in original["state_dict"].items():
        assert torch.equal(rebuilt["state_dict"][name], tensor), name
    assert rebuilt["meta"]["val_prob_fake"] == original["meta"]["val_prob_fake"]
    folds = json.loads((run / "summary.json").read_text())["folds"]
    assert [f["fold"] for f in folds] == [0, 1] and folds[1]["resumed_from_epoch"] == 1


def test_a_test_image_changed_after_the_preflight_stops_with_the_resume_command(
    finished_run, tiny_demo, tmp_path, monkeypatch
):
    """The test set is checked before training but decoded only at inference: a file overwritten in between is
    named, with the command that finishes the run once it is fixed."""
    import raydf.pipelines.training

    run = _copy_run(finished_run, tmp_path)
    # The run's own copy of the test set (the shared demo set must stay intact), and no submission yet: resuming
    # checks the test set, trains nothing (both folds are finished) and predicts.
    test_copy = tmp_path / "test"
    shutil.copytree(tiny_demo.test.parent / "test", test_copy / "test")
    shutil.copy(tiny_demo.test, test_copy / "test.csv")
    cfg = load_config(run / "config.yaml", [f"data.test={test_copy / 'test.csv'}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "submission.csv").unlink()
    victim = test_copy / pd.read_csv(test_copy / "test.csv")["path"].iloc[3]
    train_folds = raydf.pipelines.training._train_folds

    def train_then_overwrite(*args, **kwargs):
        result = train_folds(*args, **kwargs)
        victim.write_bytes(b"overwritten by a sync job")
        return result

    monkeypatch.setattr(raydf.pipelines.training, "_train_folds", train_then_overwrite)
    with pytest.raises(DataError) as info:
        train(resume_config(str(run)))
    message = str(info.value)
    assert str(victim) in message and f"python -m raydf.train resume={run}" in message
    assert "Traceback" not in message and "ray::" not in message  # the user's message, not Ray's remote traceback
    assert not (run / "submission.csv").exists()


def test_predict_refuses_an_unfinished_run(finished_run, tiny_demo, tmp_path):
    from raydf.pipelines.prediction import predict

    run = _copy_run(finished_run, tmp_path)
    (run / "checkpoints" / "fold1.pt").unlink()
    out = tmp_path / "pred.csv"
    where = re.escape(str(run))
    with pytest.raises(
        ConfigError,
        match=rf"{where} is not a finished raydf run: checkpoints of folds \[1\] are "
        rf"missing \(finish it with python -m raydf\.train resume={where}\)",
    ):
        predict(str(run), str(tiny_demo.test), str(out))
    assert not out.exists()


def test_predict_rebuilds_the_backbone_its_checkpoints_record(finished_run, tiny_demo, tmp_path):
    """The checkpoints name their network (a run's config.yaml could be edited; checkpoints from before raydf
    recorded it hold InceptionResnetV1 weights); folds of two different networks are refused."""
    from raydf.pipelines.prediction import _with_recorded_backbone, predict

    run = _copy_run(finished_run, tmp_path)
    cfg = resume_config(str(run))
    assert cfg.model.name == "test_efficientnet"
    assert _with_recorded_backbone(cfg, [{}, {}], str(run)).model.name == "inception_resnet_v1"
    assert _with_recorded_backbone(cfg, [{"model": "resnet18"}] * 2, str(run)).model.name == "resnet18"
    ckpt = torch.load(run / "checkpoints" / "fold1.pt", weights_only=True)
    assert ckpt["meta"]["model"] == "test_efficientnet"
    ckpt["meta"]["model"] = "resnet18"
    torch.save(ckpt, run / "checkpoints" / "fold1.pt")
    out = tmp_path / "pred.csv"
    with pytest.raises(ConfigError, match=r"different backbones \(resnet18, test_efficientnet\)"):
        predict(str(run), str(tiny_demo.test), str(out))
    assert not out.exists()
