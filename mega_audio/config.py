"""One config system: dataclasses, presets as plain instances, CLI flags 1:1 with fields, same names in YAML.

Precedence, lowest first: dataclass defaults < preset < YAML file (--config) < explicit CLI flags.
A field `max_seconds` is the flag `--max-seconds` and the YAML key `max_seconds`.
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


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text for its CLI flag."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


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
    flag = "--" + f.name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
    if "choices" in f.metadata:
        kwargs["choices"] = f.metadata["choices"]
    tp, optional = _unwrap_optional(tp)
    if tp is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        parser.add_argument(flag, nargs="*", type=_scalar_parser(item, False), **kwargs)
    else:
        parser.add_argument(flag, type=_scalar_parser(tp, optional), **kwargs)


def build_parser(cls: type, presets: dict[str, Any] | None = None, **parser_kwargs: Any) -> argparse.ArgumentParser:
    """An argparse parser with one flag per dataclass field, plus --config (YAML) and --preset."""
    parser = argparse.ArgumentParser(**parser_kwargs)
    parser.add_argument("--config", dest="__config", metavar="FILE.yaml", default=None,
                        help="YAML file whose keys are the field names below (flags given too win)")
    if presets:
        parser.add_argument("--preset", dest="__preset", default=None, choices=sorted(presets), help="start from a preset")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        _add_field(parser, f, hints[f.name])
    return parser


def load_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid keys are {sorted(known)}")
    return data


def parse_config(cls: type[T], argv: list[str] | None = None, presets: dict[str, T] | None = None, **parser_kwargs: Any) -> T:
    """Build a `cls` instance from defaults, an optional preset, an optional YAML file and CLI flags."""
    args = vars(build_parser(cls, presets, **parser_kwargs).parse_args(argv))
    preset, yaml_path = args.pop("__preset", None), args.pop("__config", None)
    base = presets[preset] if preset else cls()
    values = dataclasses.asdict(base)
    if yaml_path:
        values.update(load_yaml(yaml_path, cls))
    values.update(args)
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
