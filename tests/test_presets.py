"""The hint `raydf.train` gives on the user's own labelled set: the preset that measured best, when the run differs."""

from __future__ import annotations

import logging

from raydf.config import CONFIG_DIR, load_config
from raydf.runs.presets import BEST_PRESET, log_preset_hint, preset_differences, preset_hint, preset_keys

PRESET = """\
# a preset: keys of several sections, an interpolation and an on/off value
model:
  pretrained: vggface2
  dropout: 0.2
optim:
  lr: 0.004
train:
  epochs: 18
sched:
  t_max: ${train.epochs}
data:
  faces: off
"""
SAME = [
    "model.pretrained=vggface2",
    "model.dropout=0.2",
    "optim.lr=0.004",
    "train.epochs=18",
    "sched.t_max=18",
    "data.faces=off",
]


def test_preset_differences_names_the_keys_the_preset_sets_with_another_value(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text(PRESET)
    keys = preset_keys(path)
    assert keys == ["model.pretrained", "model.dropout", "optim.lr", "train.epochs", "sched.t_max", "data.faces"]
    preset = load_config(path)
    assert preset_differences(load_config(None, SAME + ["train.folds=7"]), preset, keys) == []  # folds: not its key
    assert preset_differences(load_config(None, SAME + ["optim.lr=0.001"]), preset, keys) == ["optim.lr"]
    # The interpolation compares resolved: the preset's t_max is its 18 epochs.
    assert preset_differences(load_config(None, SAME + ["train.epochs=30"]), preset, keys) == ["train.epochs"]
    default = load_config(None, [])
    assert preset_differences(default, preset, keys) == keys


def test_preset_hint_only_on_a_users_set_whose_run_differs(tmp_path, caplog):
    path = tmp_path / "best.yaml"
    path.write_text(PRESET)
    users = load_config(None, ["data.train=mine.csv", "optim.lr=0.001", "train.epochs=30"])
    line = preset_hint(users, path)
    assert line == (
        f"hint: the preset measured best on real face swaps is --config {path} (vggface2-pretrained "
        "inception_resnet_v1, fine-tuned); this run differs in model.pretrained, model.dropout, optim.lr, "
        "train.epochs, sched.t_max, data.faces (benchmarks/README.md)"
    )
    assert preset_hint(load_config(None, ["data.train=mine.csv", *SAME]), path) is None  # the preset's own config
    assert preset_hint(load_config(None, ["optim.lr=0.001"]), path) is None  # the built-in demo
    assert preset_hint(users, tmp_path / "absent.yaml") is None
    (tmp_path / "other.yaml").write_text("model:\n  no_such_key: 1\n")  # a preset of another schema: no hint
    assert preset_hint(users, tmp_path / "other.yaml") is None
    with caplog.at_level(logging.INFO, logger="raydf.runs.presets"):
        log_preset_hint(users, path)
        log_preset_hint(load_config(None, []), path)
    assert [r.getMessage() for r in caplog.records] == [line]


def test_the_hint_names_configs_pretrained(tmp_path, monkeypatch):
    """`--config pretrained`: configs/pretrained.yaml; while it is absent, no hint (then one written here stands in)."""
    from raydf.runs import presets

    users = load_config(None, ["data.train=mine.csv"])
    if not (CONFIG_DIR / f"{BEST_PRESET}.yaml").is_file():
        assert preset_hint(users) is None
        monkeypatch.setattr(presets, "CONFIG_DIR", tmp_path)
        (tmp_path / f"{BEST_PRESET}.yaml").write_text(PRESET)
    line = preset_hint(users)  # the default config (the seed's recipe) is not the preset
    assert line.startswith(f"hint: the preset measured best on real face swaps is --config {BEST_PRESET} (")
