from dataclasses import dataclass

import pytest

from mega_audio.config import option, parse_config, save_yaml


@dataclass
class Demo:
    lr: float = option(1e-3, "learning rate")
    steps: int = option(10, "steps")
    data: list[str] = option([], "stores")
    compile: bool = option(False, "torch.compile")
    init: str | None = option(None, "checkpoint")


PRESETS = {"long": Demo(steps=1000, lr=5e-4)}


def test_flags_map_one_to_one_onto_fields():
    cfg = parse_config(Demo, ["--lr", "0.5", "--data", "a", "b", "--compile", "--init", "ckpt"])
    assert cfg == Demo(lr=0.5, steps=10, data=["a", "b"], compile=True, init="ckpt")


def test_precedence_defaults_preset_yaml_cli(tmp_path):
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("steps: 77\ncompile: true\n")
    cfg = parse_config(Demo, ["--preset", "long", "--config", str(yaml_path), "--lr", "0.1"], presets=PRESETS)
    assert (cfg.lr, cfg.steps, cfg.compile) == (0.1, 77, True)
    assert parse_config(Demo, ["--preset", "long"], presets=PRESETS).lr == 5e-4


def test_yaml_round_trip_uses_field_names(tmp_path):
    cfg = Demo(lr=0.25, data=["x"], init=None)
    save_yaml(cfg, tmp_path / "c.yaml")
    assert parse_config(Demo, ["--config", str(tmp_path / "c.yaml")]) == cfg


def test_unknown_yaml_key_names_the_valid_ones(tmp_path):
    (tmp_path / "bad.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="valid keys"):
        parse_config(Demo, ["--config", str(tmp_path / "bad.yaml")])


def test_optional_field_accepts_none_and_bad_types_are_rejected():
    assert parse_config(Demo, ["--init", "none"]).init is None
    with pytest.raises(SystemExit):
        parse_config(Demo, ["--steps", "many"])
