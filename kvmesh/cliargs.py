"""Command-line flags from a dataclass config: one flag per field, its help taken from the docstring's Args.

@dataclass
class BenchConfig:
    \"\"\"...
    Args:
        agents: agents in the fully connected team.
    \"\"\"
    agents: int = 5

add_config_arguments(parser, BenchConfig)      # --agents N  (help: "agents in the fully ...")
config = config_from_args(BenchConfig, args)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing


def field_help(cls) -> dict[str, str]:
    """{field: help} parsed from the "Args:" sections of `cls.__doc__` and its dataclass bases' (continuation
    lines joined; a subclass's entry overrides its base's)."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            helps |= _own_field_help(klass)
    return helps


def _own_field_help(cls) -> dict[str, str]:
    doc = cls.__doc__ or ""
    if "Args:" not in doc:
        return {}
    helps: dict[str, str] = {}
    current = None
    for line in doc.split("Args:", 1)[1].splitlines():
        match = re.match(r"^\s{4,8}(\w+):\s*(.*)$", line)
        if match:
            current = match.group(1)
            helps[current] = match.group(2).strip()
        elif current and line.strip():
            helps[current] += " " + line.strip()
        elif not line.strip() and current:
            current = None
    return helps


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else None
        text = helps.get(field.name, "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
        parser.add_argument(flag, type=base, default=default, help=f"{text} (default: {default})")


def config_from_args(cls, args: argparse.Namespace, **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return cls(**(values | overrides))
