"""Run configs read as users write them: YAML numbers in exponent form, --set overrides, and clear refusals."""
import pytest

from polymodal import load_run_config
from polymodal.typed_config import ConfigError


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # PyYAML alone (YAML 1.1) reads these as the strings "2e-3" and "1e4".
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 2e-3, weight_decay: 1e-4, epochs: 3}\ndata: {shuffle_buffer: 1000}\n")
    config = load_run_config(path)
    assert config.train.lr == 0.002 and config.train.weight_decay == 0.0001 and config.train.epochs == 3


def test_set_overrides_parse_yaml_scalars():
    config = load_run_config({}, overrides=["train.lr=5e-4", "train.compile=true", "train.ddp_bucket_mb=5"])
    assert config.train.lr == 0.0005 and config.train.compile is True and config.train.ddp_bucket_mb == 5


def test_a_word_where_a_number_belongs_is_still_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.lr = '1e': expected a number"):
        load_run_config({}, overrides=["train.lr=1e"])
    with pytest.raises(ConfigError, match="train.ddp_bucket_mb = 0: must be greater than 0"):
        load_run_config({}, overrides=["train.ddp_bucket_mb=0"])
