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

A field's metadata may give `choices` (a sequence, or a function returning one), `check` (a function that
returns the value or raises ValueError saying what is wrong: for values no list holds), `short` (a one-letter flag
beside the long one) and `const` (the value of the flag given alone); `positional={field: nargs}` makes fields
positional (nargs None: exactly one), `skip` leaves fields out. Booleans become `--flag/--no-flag`, lists take
one or more values, a field without a default is a required flag. Help text goes through `argparse_help`, so a
`%` in a docstring or a default shows as itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping, Sequence

from kvmesh.config import ConfigError, field_help
from kvmesh.kvcomm.channel import available_channels, settings_class_of
from kvmesh.kvcomm.settings import setting_key


def flag(name: str) -> str:
    """The flag of a config field: `max_new_tokens` -> `--max-new-tokens`."""
    return "--" + name.replace("_", "-")


def argparse_help(text: str) -> str:
    """`text` (a docstring's words, a default) as argparse help, shown as written: argparse formats help with
    `%`, so a bare `%` ("90% of tasks") would crash `--help` and every `%` is doubled."""
    return text.replace("%", "%%")


def show_config_error(error: ConfigError) -> str:
    """A config error as the CLI says it: its fields as flags, without the class name."""
    return error.message.format(**{field: flag(field) for field in error.fields})


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls,
    skip: tuple[str, ...] = (),
    positional: Mapping[str, str | None] | None = None,
    prefix: str = "",
) -> None:
    """One flag per field of the dataclass `cls` (see the module); `prefix` goes before each field's name, in
    its flag and its destination (a field's `alias` metadata gives a second, shorter flag)."""
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
        more = field.metadata.get("more_help")  # help known only at run time (the channels registered)
        if more is not None:
            text = f"{text.rstrip('.')}. {more()}"
        options: dict = {"help": argparse_help(text)}
        choices = field.metadata.get("choices")
        if choices is not None:
            options["choices"] = tuple(choices() if callable(choices) else choices)
        if "const" in field.metadata:  # `--flag` alone means `const`; `--flag VALUE` gives a value
            options |= {"nargs": "?", "const": field.metadata["const"], "type": base}
        elif typing.get_origin(base) in (list, tuple):
            options |= {"nargs": "+", "type": typing.get_args(base)[0]}
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _checked(base, field.metadata["check"]) if "check" in field.metadata else base
        if field.name in positional:
            nargs = positional[field.name]
            parser.add_argument(field.name, **(options | ({"nargs": nargs, "default": default} if nargs else {})))
            continue
        dest = prefix + field.name
        names = [flag(dest), *([field.metadata["short"]] if "short" in field.metadata else [])]
        names += [flag(field.metadata["alias"])] if "alias" in field.metadata else []
        if not has_default:
            options["required"] = True
        else:
            options["default"] = default
            if kind is not bool and default not in (None, ""):
                options["help"] = argparse_help(f"{text} (default: {default})")
        parser.add_argument(*names, dest=dest, **options)


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
    channel_flags = vars(args).get(CHANNEL_FLAGS, {}) if CHANNELS in team_fields else {}
    ignored = [name for name in (*team_fields, *channel_flags) if name in args.given]
    if not (spec or designer) or not ignored:
        return
    # a channel flag by the one name its setting has (`setting_key`: an alias such as --anchors, if it has one)
    names = ", ".join(f"{{{setting_key(*channel_flags[name]) if name in channel_flags else name}}}" for name in ignored)
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
    if CHANNELS in names and CHANNEL_FLAGS in args:
        values[CHANNELS] = channels_from_args(args)
    return cls(**(values | overrides))


# --- channel settings: flags generated from each channel's settings class ------------------------------------------

CHANNELS, CHANNEL_FLAGS = "channels", "channel_flags"  # a config's settings-by-channel field; where flags are listed


def add_channel_arguments(parser: argparse.ArgumentParser) -> None:
    """`--<channel>-<field>` for every field of every available channel's settings class (`--kv-select-fraction`,
    `--kv-reuse-anchors-dir`, or a field's alias: `--anchors`); `config_from_args` gathers the ones given into
    the config's `channels` field."""
    flags: dict[str, tuple[str, str]] = {}
    for name in available_channels():
        settings_class = settings_class_of(name)
        if settings_class is None:
            continue
        group = parser.add_argument_group(f"{name} channel settings ({settings_class.__name__})")
        prefix = name.replace("-", "_") + "_"  # as `setting_key` names a field without an alias
        add_config_arguments(group, settings_class, prefix=prefix)
        flags |= {prefix + field.name: (name, field.name) for field in dataclasses.fields(settings_class)}
    parser.set_defaults(**{CHANNEL_FLAGS: flags})


def channels_from_args(args: argparse.Namespace) -> dict[str, dict]:
    """The channel settings the command line set itself, by channel name (flags left at their defaults are not
    settings anyone chose, so they are left out)."""
    channels: dict[str, dict] = {}
    for dest, (name, field) in getattr(args, CHANNEL_FLAGS).items():
        if dest in args.given:
            value = getattr(args, dest)
            channels.setdefault(name, {})[field] = tuple(value) if isinstance(value, list) else value
    return channels


def _checked(kind: type, check) -> typing.Callable[[str], object]:
    """An argparse type: `kind(text)` through `check`, whose ValueError becomes the flag's error message."""

    def parse(text: str):
        try:
            return check(kind(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = kind.__name__
    return parse
