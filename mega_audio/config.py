"""One config system: dataclasses, presets as plain instances, CLI flags 1:1 with fields, same names in YAML.

Precedence, lowest first: dataclass defaults < preset < YAML file (--config) < explicit CLI flags.
A field `max_seconds` is the flag `--max-seconds` and the YAML key `max_seconds`; a field declared with
`option(..., positional=True)` is a positional argument instead (`mega-audio inspect STORE`).
Bounds (`option(..., min=1)`, `max=`; `above=` / `below=` for open bounds) and choices are checked once the values
are merged, so a bad value from a flag or a YAML file stops the command before it does anything.
Every `mega-audio` command and `train/pretrain.py` parse their flags here (see mega_audio/cli.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def option(default: Any, help: str, *, positional: bool = False, required: bool = False, **kwargs: Any) -> Any:
    """A dataclass field with help text for its CLI flag. `positional` makes it a positional argument (required
    unless a --config YAML gives it); `required` refuses an empty value after flags and YAML are merged;
    `min` / `max` (inclusive) and `above` / `below` (exclusive) bound a number, `choices` lists the allowed values."""
    metadata = {"help": help, "positional": positional, "required": required or positional, **kwargs}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(field: dataclasses.Field) -> str:
    """How a field is written on the command line: `--max-seconds`, or its name when positional."""
    return field.name if field.metadata.get("positional") else "--" + field.name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _scalar_parser(tp: Any, optional: bool):
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null", ""):
            return None
        return tp(text)

    parse.__name__ = getattr(tp, "__name__", "value")
    return parse


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
    if f.metadata.get("positional"):
        name = [f.name]  # argparse leaves a SUPPRESS default of an absent positional unset, as for flags
    else:
        name, kwargs["dest"] = [flag(f)], f.name
    if "choices" in f.metadata and f.metadata.get("positional"):
        # argparse checks an absent optional positional's SUPPRESS default against choices: config_from_args checks
        kwargs["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    elif "choices" in f.metadata:
        kwargs["choices"] = f.metadata["choices"]
    tp, optional = _unwrap_optional(tp)
    if tp is bool:
        parser.add_argument(*name, action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        parser.add_argument(*name, nargs="*", type=_scalar_parser(item, False), **kwargs)
    else:
        nargs = {"nargs": "?"} if f.metadata.get("positional") else {}
        parser.add_argument(*name, type=_scalar_parser(tp, optional), **nargs, **kwargs)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, presets: dict[str, Any] | None = None) -> None:
    """One argument per dataclass field, plus --config (YAML), --debug and, with presets, --preset."""
    parser.add_argument("--config", dest="__config", metavar="FILE.yaml", default=None,
                        help="YAML file whose keys are the field names below (flags given too win)")
    parser.add_argument("--debug", dest="__debug", action="store_true",
                        help="show the full traceback of an error (also: MEGA_AUDIO_DEBUG=1)")
    if presets:
        parser.add_argument("--preset", dest="__preset", default=None, choices=sorted(presets),
                            help="start from a preset")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        _add_field(parser, f, hints[f.name])


def build_parser(cls: type, presets: dict[str, Any] | None = None, **parser_kwargs: Any) -> argparse.ArgumentParser:
    """An argparse parser for `cls` alone (what parse_config uses; the CLI adds the same arguments to a subparser)."""
    parser = argparse.ArgumentParser(**parser_kwargs)
    add_config_arguments(parser, cls, presets)
    return parser


def load_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid keys are {sorted(known)}")
    return data


def config_from_args(cls: type[T], args: dict[str, Any], parser: argparse.ArgumentParser,
                     presets: dict[str, T] | None = None) -> T:
    """Merge defaults < preset < YAML < the parsed flags `args` (only those given) into a `cls` instance."""
    args = dict(args)
    preset, yaml_path = args.pop("__preset", None), args.pop("__config", None)
    args.pop("__debug", None)  # read from argv by the error handler (mega_audio/cli.py), which wraps the parsing too
    base = presets[preset] if preset else cls()
    values = dataclasses.asdict(base)
    if yaml_path:
        values.update(load_yaml(yaml_path, cls))
    values.update(args)
    missing = [flag(f) for f in dataclasses.fields(cls)
               if f.metadata.get("required") and values[f.name] in ("", [], None)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    for f in dataclasses.fields(cls):  # also what a YAML file or a positional gave
        choices = f.metadata.get("choices")
        if choices is not None and values[f.name] is not None and values[f.name] not in choices:
            parser.error(f"argument {flag(f)}: invalid choice: {values[f.name]!r} (choose from {', '.join(map(str, choices))})")
    config = cls(**values)
    check_bounds(config)
    return config


def check_bounds(config: Any) -> None:
    """Refuse a number outside its field's bounds with one line naming the flag."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if isinstance(value, bool) or not isinstance(value, (int, float, list)):
            continue
        for v in value if isinstance(value, list) else [value]:
            low = f">= {meta['min']}" if "min" in meta and v < meta["min"] else None
            high = f"<= {meta['max']}" if "max" in meta and v > meta["max"] else None
            above = f"> {meta['above']}" if "above" in meta and v <= meta["above"] else None
            below = f"< {meta['below']}" if "below" in meta and v >= meta["below"] else None
            if low or high or above or below:
                raise ValueError(f"{flag(f)} must be {low or high or above or below}, got {v}")


def parse_config(cls: type[T], argv: list[str] | None = None, presets: dict[str, T] | None = None,
                 **parser_kwargs: Any) -> T:
    """Build a `cls` instance from defaults, an optional preset, an optional YAML file and CLI flags."""
    parser = build_parser(cls, presets, **parser_kwargs)
    return config_from_args(cls, vars(parser.parse_args(argv)), parser, presets)


def to_argv(config: Any) -> list[str]:
    """The flags that rebuild `config` (the fields that differ from the defaults):
    parse_config(type(config), to_argv(config)) == config."""
    argv: list[str] = []
    defaults = type(config)()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name) and not f.metadata.get("positional"):
            continue
        name = [] if f.metadata.get("positional") else [flag(f)]
        if isinstance(value, bool):
            argv.append(flag(f) if value else "--no-" + flag(f)[2:])
        elif isinstance(value, list):
            argv += name + [str(v) for v in value]
        else:
            argv += name + ["none" if value is None else str(value)]
    return argv


def to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
