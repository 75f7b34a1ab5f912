"""Every `kvmesh ...` command the README shows still parses: its command and flags exist, as generated."""

import re
import shlex
from pathlib import Path

import pytest

from kvmesh.cli import make_parser

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def readme_commands() -> list[str]:
    """`kvmesh` lines of the README's bash blocks (continuation lines joined, comments dropped) and inline
    `kvmesh ...` spans that are whole commands: with arguments, and no placeholders such as `a|b`, `...`."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("kvmesh "):
                commands.append(line)
    inline = re.findall(r"`(kvmesh [^`]+)`", README)
    whole = [c for c in inline if len(c.split()) > 3 and not re.search(r"\||\.\.\.|<|\[", c)]
    commands += [c for c in whole if c not in commands]
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_every_command():
    shown = {shlex.split(c)[1] for c in COMMANDS}
    assert shown >= {"run", "eval", "report", "viz", "design", "bench", "models"}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_parses(command):
    args = shlex.split(command)
    make_parser().parse_args(args[1:])  # argparse exits (SystemExit) on an unknown command or flag
