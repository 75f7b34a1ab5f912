"""`--help` works for every command and subcommand the CLI's own parser holds, and help text taken from a config
docstring shows a `%` as written (argparse formats help with `%`, which once crashed `kvmesh optima train --help`)."""

import argparse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kvmesh.cli import main, make_parser
from kvmesh.cli.flags import add_config_arguments


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path under `parser` (itself first), found by walking its subparsers: a new command is
    checked without this test naming it."""
    yield path
    for action in parser._actions:  # argparse keeps no public list of a parser's subcommands
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from command_paths(child, (*path, name))


COMMANDS = list(command_paths(make_parser()))


def test_the_walk_finds_nested_subcommands():
    assert ("optima", "train") in COMMANDS and ("c2c", "train") in COMMANDS and ("design", "plot") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "kvmesh")
def test_help_works_and_names_the_command(path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    assert f"usage: {' '.join(('kvmesh', *path))}" in " ".join(capsys.readouterr().out.split())


@dataclass
class Sharing:
    """Settings whose help holds percent signs.

    Args:
        share: keep 90% of the tasks (a bare % too).
        label: what the plot calls it.
    """

    share: float = 0.9
    label: str = "50% off"


def test_a_percent_sign_in_a_config_docstring_or_default_renders():
    parser = argparse.ArgumentParser(prog="sharing")
    add_config_arguments(parser, Sharing)
    text = " ".join(parser.format_help().split())  # argparse wraps help lines
    assert "keep 90% of the tasks (a bare % too). (default: 0.9)" in text
    assert "what the plot calls it. (default: 50% off)" in text
