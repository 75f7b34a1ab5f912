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

A field's metadata may give `choices` (a sequence, or a function returning one), `short` (a one-letter flag
beside the long one) and `const` (the value of the flag given alone); `positional={field: nargs}` makes fields
positional (nargs None: exactly one), `skip` leaves fields out. Booleans become `--flag/--no-flag`, lists take
one or more values, a field without a default is a required flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping, Sequence

from kvmesh.config import ConfigError, field_help


def flag(name: str) -> str:
    """The flag of a config field: `max_new_tokens` -> `--max-new-tokens`."""
    return "--" + name.replace("_", "-")


def show_config_error(error: ConfigError) -> str:
    """A config error as the CLI says it: its fields as flags, without the class name."""
    return error.message.format(**{field: flag(field) for field in error.fields})


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls,
    skip: tuple[str, ...] = (),
    positional: Mapping[str, str | None] | None = None,
) -> None:
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    positional = positional or {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind = hints[field.name]
        optional = typing.get_origin(kind) in (types.UnionType, typing.Union)
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind) if optional else kind  # X | None
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        text = helps.get(field.name, "")
        options: dict = {"help": text}
        choices = field.metadata.get("choices")
        if choices is not None:
            options["choices"] = tuple(choices() if callable(choices) else choices)
        if "const" in field.metadata:  # `--flag` alone means `const`; `--flag VALUE` gives a value
            options |= {"nargs": "?", "const": field.metadata["const"], "type": base}
        elif typing.get_origin(base) is list:
            options |= {"nargs": "+", "type": typing.get_args(base)[0]}
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = base
        if field.name in positional:
            nargs = positional[field.name]
            parser.add_argument(field.name, **(options | ({"nargs": nargs, "default": default} if nargs else {})))
            continue
        names = [flag(field.name), *([field.metadata["short"]] if "short" in field.metadata else [])]
        if not has_default:
            options["required"] = True
        else:
            options["default"] = default
            if kind is not bool and default not in (None, ""):
                options["help"] = f"{text} (default: {default})"
        parser.add_argument(*names, dest=field.name, **options)


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The options `argv` sets itself, not by default: parsed once more with every option's default suppressed."""
    actions = list(_actions(parser))
    saved = [(action, action.default) for action in actions]
    for action in actions:
        action.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _actions(child)
        elif action.option_strings and action.dest != "help":  # positionals are always given, or their default
            yield action


# doubled braces: ConfigError's message is a format string
SPEC_HOLDS = "its agents, graph, rounds, decision, token_budget, seed, and reuse: {{anchors_dir: DIR}} for anchors"


def refuse_team_flags(args: argparse.Namespace, team_fields: Sequence[str]) -> None:
    """Refuse the team flags the user set beside `--spec` or `--designer`, which bring their own team: ignoring
    them would run another experiment than the one asked for."""
    spec, designer = getattr(args, "spec", None), getattr(args, "designer", None)
    ignored = [name for name in team_fields if name in args.given]
    if not (spec or designer) or not ignored:
        return
    names = ", ".join(f"{{{name}}}" for name in ignored)
    them = "them" if len(ignored) > 1 else "it"
    if spec:
        raise ConfigError(
            f"the spec {spec} sets the team, so {names} would be ignored; set {them} in the spec "
            f"({SPEC_HOLDS}), or drop {them}"
        )
    raise ConfigError(f"the designer's team sets the team, so {names} would be ignored; drop {them}")


def config_from_args(cls, args: argparse.Namespace, **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return cls(**(values | overrides))
