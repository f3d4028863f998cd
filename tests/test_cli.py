"""Specifications of the one command surface: every `mega-audio` command is a dataclass whose fields are its flags."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mega_audio.cli import COMMANDS, config_class, main
from mega_audio.config import flag, parse_config, to_argv
from mega_audio.train.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parent.parent


def mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_lists_every_field_of_its_config(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: mega-audio {command} ") and mentions(text, "--config")
    fields = dataclasses.fields(config_class(command))
    assert fields and [f.name for f in fields if not mentions(text, flag(f))] == []


def test_top_level_help_names_every_command_and_a_missing_argument_is_refused():
    out = subprocess.run([sys.executable, "-m", "mega_audio.cli", "--help"], capture_output=True, text=True, check=True)
    assert all(mentions(out.stdout, name) for name in COMMANDS)
    missing = subprocess.run([sys.executable, "-m", "mega_audio.cli", "predict", "clip.npy"], capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "required: --checkpoint" in missing.stderr


def test_train_script_parses_the_same_flags_as_mega_audio_pretrain():
    script = str(REPO / "train" / "pretrain.py")
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True).stdout
    assert [f.name for f in dataclasses.fields(PretrainConfig) if not mentions(out, flag(f))] == []


def test_to_argv_rebuilds_a_config_from_flags():
    cfg = PretrainConfig(data=["a", "b"], lr=0.5, resume=True, decay_steps=None, mixed_precision="bf16", seed=3)
    assert parse_config(PretrainConfig, to_argv(cfg)) == cfg
    cfg = dataclasses.replace(cfg, compile=False, decay_steps=7)
    assert parse_config(PretrainConfig, to_argv(cfg)) == cfg
