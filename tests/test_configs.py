"""Stage configs: YAML + CLI overrides, unknown keys, refusing a changed config in an output folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from hf_scdd.configs import (
    ConfigError,
    StageConfig,
    check_or_write_config,
    config_from_dict,
    parse_config,
    save_config,
)
from hf_scdd.utils import atomic_write_text


@dataclass
class ToyConfig(StageConfig):
    lr: float = field(default=0.1, metadata={"help": "Learning rate of the toy stage."})
    epochs: int = field(default=2, metadata={"help": "Passes over the data."})
    arch: str = field(default="resnet18", metadata={"help": "Backbone architecture."})
    note: str | None = field(default=None, metadata={"help": "Free text."})


def write_yaml(tmp_path, text: str):
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return str(path)


def test_defaults():
    config = parse_config(ToyConfig, [])
    assert (config.lr, config.epochs, config.arch, config.seed, config.dataset) == (
        0.1,
        2,
        "resnet18",
        0,
        "fashion_mnist",
    )


def test_yaml_then_cli_precedence(tmp_path):
    path = write_yaml(tmp_path, "lr: 0.5\nepochs: 7\nseed: 3\nnote: from-yaml\n")
    config = parse_config(ToyConfig, ["--config", path, "--epochs", "3", "--arch", "resnet10"])
    assert config.lr == 0.5  # from YAML
    assert config.epochs == 3  # CLI beats YAML
    assert config.arch == "resnet10"  # CLI beats default
    assert config.seed == 3 and config.note == "from-yaml"
    assert config.output_dir == "outputs/run"  # untouched default
    # --config=PATH form, and the CLI wins regardless of position
    config = parse_config(ToyConfig, ["--seed", "9", f"--config={path}"])
    assert config.seed == 9 and config.lr == 0.5


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = write_yaml(tmp_path, "lr: 0.5\nlearning_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['learning_rate'\] for ToyConfig"):
        parse_config(ToyConfig, ["--config", path])


def test_yaml_must_be_a_mapping_and_config_needs_a_path(tmp_path):
    path = write_yaml(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(ToyConfig, ["--config", path])
    with pytest.raises(ConfigError, match="--config needs a YAML file path"):
        parse_config(ToyConfig, ["--config"])


def test_unknown_cli_flag_is_an_error():
    with pytest.raises(
        ConfigError, match=r"unknown argument\(s\) \['--learning_rate', '0.2'\] for ToyConfig"
    ):
        parse_config(ToyConfig, ["--learning_rate", "0.2"])


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit) as err:
        parse_config(ToyConfig, ["--help"], prog="hf-scdd toy")
    assert err.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--lr", "--epochs", "--output_dir", "--seed", "--dataset", "--config"):
        assert flag in text
    assert "Learning rate of the toy stage." in text


def test_config_from_dict():
    assert config_from_dict(ToyConfig, {"lr": 0.3}).lr == 0.3
    with pytest.raises(ConfigError, match=r"\['bogus'\]"):
        config_from_dict(ToyConfig, {"bogus": 1})


def test_check_or_write_config(tmp_path):
    out = tmp_path / "run"
    config = ToyConfig(output_dir=str(out), lr=0.2, seed=1)
    assert check_or_write_config(config, out) is False  # fresh folder: written
    saved = json.loads((out / "config.json").read_text())
    assert saved["stage"] == "ToyConfig" and saved["config"]["lr"] == 0.2 and "hf_scdd_version" in saved

    assert check_or_write_config(ToyConfig(output_dir=str(out), lr=0.2, seed=1), out) is True  # resumption
    # runtime-only fields may differ on resumption
    assert check_or_write_config(
        ToyConfig(output_dir=str(out), lr=0.2, seed=1, cpu=True, report_to="none"), out
    )

    with pytest.raises(ConfigError) as err:
        check_or_write_config(ToyConfig(output_dir=str(out), lr=0.3, seed=1), out)
    message = str(err.value)
    assert "lr: 0.2 -> 0.3" in message and "seed" not in message
    assert "--output_dir" in message
    # the refused run did not overwrite the recorded config
    assert json.loads((out / "config.json").read_text())["config"]["lr"] == 0.2


def test_a_path_spelt_another_way_is_the_same_config(tmp_path, monkeypatch):
    data = tmp_path / "data" / "set"
    data.mkdir(parents=True)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "data")
    out = tmp_path / "run"
    assert check_or_write_config(ToyConfig(output_dir=str(out), note="set"), out) is False  # relative, recorded
    assert check_or_write_config(ToyConfig(output_dir=str(out), note=str(data)), out) is True  # absolute: the same
    with pytest.raises(ConfigError, match="note: 'set' -> "):
        check_or_write_config(ToyConfig(output_dir=str(out), note=str(tmp_path / "other")), out)  # another folder
    with pytest.raises(ConfigError, match="note"):
        check_or_write_config(ToyConfig(output_dir=str(out), note="missing"), out)  # not on disk: compared as text


def test_save_config_extra_and_atomic_write(tmp_path):
    path = save_config(ToyConfig(), tmp_path, name="recover_config.json", backbone="tester/model@abc")
    assert json.loads(path.read_text())["backbone"] == "tester/model@abc"
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]  # no temp file left behind
