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


@dataclass
class Positional:
    dataset: str = option("", "recipe", positional=True, choices=["gtzan", "folder"])
    kind: str = option("a", "kind", choices=["a", "b"])


def test_choices_hold_for_positionals_flags_and_yaml_alike(tmp_path, capsys):
    assert parse_config(Positional, ["folder", "--kind", "b"]) == Positional("folder", "b")
    for argv in (["nope"], ["folder", "--kind", "c"]):
        with pytest.raises(SystemExit):
            parse_config(Positional, argv)
        assert "invalid choice" in capsys.readouterr().err
    (tmp_path / "run.yaml").write_text("kind: z\n")
    with pytest.raises(SystemExit):
        parse_config(Positional, ["gtzan", "--config", str(tmp_path / "run.yaml")])
    assert "invalid choice: 'z'" in capsys.readouterr().err


def test_build_manifest_script_takes_the_dataset_as_a_checked_positional(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from audio_trees import write_folder_tree

    repo = Path(__file__).resolve().parent.parent
    write_folder_tree(tmp_path / "audio", per_label=3)
    script = [sys.executable, str(repo / "tokenize" / "build_manifest.py")]
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([*script, "folder", str(tmp_path / "audio"), str(tmp_path / "m.jsonl")], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 9
    bad = subprocess.run([*script, "gtzn", "x", "y"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'gtzn'" in bad.stderr
