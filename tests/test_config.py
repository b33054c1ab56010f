import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from raydf.config import check_data_paths, load_config, valid_keys
from raydf.errors import ConfigError

CONTRACT_KEYS = [
    "run_dir",
    "data.train",
    "data.test",
    "data.resize",
    "data.crop",
    "train.folds",
    "train.epochs",
    "train.batch_size",
    "train.patience",
    "train.seed",
    "model.dropout",
    "optim.lr",
    "sched.t_max",
    "resources.gpus_per_fold",
    "resources.cpus_per_fold",
    "ray.address",
]


def test_contract_keys_exist():
    assert set(CONTRACT_KEYS) <= set(valid_keys())


def test_seed_config_reproduces_the_seed():
    cfg = load_config("seed")
    assert (cfg.train.folds, cfg.train.epochs, cfg.train.batch_size, cfg.train.patience, cfg.train.seed) == (
        4,
        60,
        64,
        7,
        42,
    )
    assert (cfg.optim.lr, tuple(cfg.optim.betas), cfg.optim.weight_decay) == (0.0015, (0.9, 0.999), 1e-4)
    assert (cfg.sched.t_max, cfg.data.resize, cfg.data.crop, cfg.model.dropout) == (50, 256, 156, 0.6)
    assert cfg.train.split == "kfold" and cfg.resources.gpus_per_fold == 1


def test_budget_preset_is_the_seed_at_96_px_with_one_cosine_period_and_its_swept_lr_and_dropout():
    """configs/budget.yaml changes the seed's sizes, epochs, schedule, learning rate and dropout only (hardware is
    left to the machine), and its schedule follows train.epochs when that is overridden."""
    seed, budget = load_config("seed"), load_config("budget")
    assert (budget.data.resize, budget.data.crop, budget.train.epochs, budget.sched.t_max) == (160, 96, 18, 18)
    assert (budget.optim.lr, budget.model.dropout) == (0.004, 0.2)
    seed_node, budget_node = OmegaConf.structured(seed), OmegaConf.structured(budget)
    changed = {key for key in valid_keys() if OmegaConf.select(seed_node, key) != OmegaConf.select(budget_node, key)}
    assert changed == {
        "data.resize",
        "data.crop",
        "train.epochs",
        "sched.t_max",
        "optim.lr",
        "model.dropout",
        "resources.gpus_per_fold",
        "resources.cpus_per_fold",
        "resources.loader_workers",
    }
    longer = load_config("budget", ["train.epochs=40"])
    assert longer.sched.t_max == 40 and load_config("budget", ["sched.t_max=7"]).sched.t_max == 7


def test_default_config_is_cpu_sized_and_overridable():
    cfg = load_config(None, ["train.epochs=3", "optim.lr=0.01", "data.train=/x.csv", "ray.address=auto"])
    assert cfg.train.folds == 2 and cfg.data.crop == 80  # configs/default.yaml
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.01 and cfg.data.train == "/x.csv"
    assert cfg.ray.address == "auto"


def test_cache_off_is_the_word_off_not_a_yaml_boolean(tmp_path):
    """YAML 1.1 reads `off` as false; `data.cache=off` (and `cache: off` in a file) must still mean no cache."""
    assert load_config(None, ["data.cache=off"]).data.cache == "off"
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  cache: off\n")
    assert load_config(f).data.cache == "off"
    with pytest.raises(
        ConfigError, match=r"data\.cache.*must be one of auto, memory, disk, encoded, stream, off \(got 'on'\)"
    ):
        load_config(None, ["data.cache='on'"])


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'.*Did you mean 'train\.epochs'"):
        load_config(None, ["train.epoch=3"])


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate.*c\.yaml.*Valid keys: .*optim\.lr"):
        load_config(f)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(None, ["train.epochs=many"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.folds=1", "train.folds"),
        ("optim.lr=-0.1", "optim.lr"),
        ("model.dropout=1.5", "model.dropout"),
        ("data.crop=64", "data.crop"),
        ("data.resize=78", "data.resize"),
        ("train.split=random", "train.split"),
        ("train.batch_size=1", "train.batch_size"),
        ("data.on_bad=ignore", "data.on_bad"),
        ("data.decode_threads=-1", "data.decode_threads"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_model_name_is_the_seed_network_or_a_timm_model():
    assert load_config(None, []).model.name == "inception_resnet_v1"
    assert load_config(None, ["model.name=efficientnet_b0", "data.crop=64"]).model.name == "efficientnet_b0"
    with pytest.raises(ConfigError, match=r"'model\.name'.*efficientnet_b4x.*did you mean efficientnet_b4"):
        load_config(None, ["model.name=efficientnet_b4x"])
    with pytest.raises(ConfigError, match=r"data\.crop.*at least 32 for resnet18"):
        load_config(None, ["model.name=resnet18", "data.crop=16", "data.resize=20"])


def test_cli_user_error_exits_nonzero_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "raydf.train", "train.epoch=3"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown config key 'train.epoch'" in proc.stderr and "Traceback" not in proc.stderr


def test_print_config_round_trips(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "raydf.train", "--print-config", "train.epochs=7"],
        capture_output=True,
        text=True,
        check=True,
    )
    saved = tmp_path / "config.yaml"
    saved.write_text(proc.stdout)
    assert load_config(saved).train.epochs == 7


@pytest.mark.parametrize("key", ["data.train", "data.test", "data.train_root", "data.test_root"])
def test_data_path_that_does_not_exist_names_the_key(tmp_path, key):
    cfg = load_config(None, [f"{key}={tmp_path / 'nope'}"])  # loads: a saved run's data may have moved since
    with pytest.raises(ConfigError, match=rf"'{key}': {tmp_path / 'nope'} does not exist; it must be"):
        check_data_paths(cfg)


def test_data_root_must_be_a_folder(tmp_path):
    (tmp_path / "f.csv").write_text("path,label\n")
    with pytest.raises(ConfigError, match=r"'data\.test_root': .*f\.csv is not a folder"):
        check_data_paths(load_config(None, [f"data.test_root={tmp_path / 'f.csv'}"]))


def test_relative_data_path_error_shows_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"'data\.train': faces\.csv \(in {tmp_path}\) does not exist"):
        check_data_paths(load_config(None, ["data.train=faces.csv"]))


def test_existing_data_paths_pass(tmp_path):
    (tmp_path / "t.csv").write_text("path,label\n")
    check_data_paths(load_config(None, [f"data.train={tmp_path / 't.csv'}", f"data.test_root={tmp_path}"]))


@pytest.mark.parametrize(
    "command, before",
    [("train", []), ("tune", []), ("calibrate", ["RUN"]), ("faces", ["SRC", "OUT"]), ("serve", ["--run", "RUN"])],
)
def test_key_value_overrides_may_sit_on_both_sides_of_a_flag(command, before):
    """`python -m raydf.train train.epochs=5 -q data.train=x.csv`: plain argparse stops taking key=value pairs at the
    flag and refuses the rest ("unrecognized arguments")."""
    import importlib

    args = importlib.import_module(f"raydf.{command}").parse_args([*before, "train.epochs=5", "-q", "data.crop=64"])
    assert args.overrides == ["train.epochs=5", "data.crop=64"] and args.quiet
