from pathlib import Path

import pytest

from tfmarket.config import from_dict, load_config, to_yaml
from tfmarket.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path):
    import yaml

    config = load_config(path)
    assert from_dict(yaml.safe_load(to_yaml(config))) == config


def test_base_inheritance_and_overrides_precedence():
    config = load_config("configs/demo.yaml", ["train.epochs=3", "data.flip=false"])
    assert config.name == "demo"
    assert config.data.height == 96  # demo.yaml's own value wins over cpu_resnet50.yaml's 128
    assert config.data.pad == 6 and config.data.ids_per_batch == 8  # from cpu_resnet50.yaml
    assert config.model.last_stride == 1  # from market1501_resnet50.yaml
    assert config.train.epochs == 3 and config.data.flip is False


def test_overrides_are_type_checked():
    assert load_config(None, ["train.decay_epochs=[5,9]"]).train.decay_epochs == (5, 9)
    assert load_config(None, ["train.learning_rate=1e-3"]).train.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["train.epochs=two"])
    with pytest.raises(ConfigError, match="true/false"):
        load_config(None, ["data.flip=maybe"])


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match="valid keys: train.epochs"):
        load_config(None, ["train.epoch=2"])
    with pytest.raises(ConfigError, match="unknown config key 'optim'"):
        load_config(None, ["optim.lr=2"])


def test_choices_are_checked():
    with pytest.raises(ConfigError, match="resnet50, tiny"):
        load_config(None, ["model.backbone=vgg"])


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
