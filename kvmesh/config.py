"""Settings as dataclasses: errors that name the fields they are about, and help text from their docstrings.

Every config in kvmesh is a dataclass whose docstring's "Args:" section documents each field (TRL's style);
the CLI turns each field into a flag (`kvmesh.cli.flags`). A bad value raises `ConfigError`, which names its
fields, so each surface can show them its own way: Python shows field names (`EvalConfig: limit must be at
least 1`), the CLI shows flags (`--limit must be at least 1`).
"""

from __future__ import annotations

import dataclasses
import re
import string


class ConfigError(ValueError):
    """A setting that cannot work. `message` names fields as `{field}`; `render` shows them as asked.

    Args:
        message: what is wrong and how to fix it, with `{name}` for each field it is about.
        owner: the config class's name, prefixed to the message in Python.
    """

    def __init__(self, message: str, owner: str = "") -> None:
        self.message, self.owner = message, owner
        self.fields = [name for _, name, _, _ in string.Formatter().parse(message) if name]
        super().__init__(self.render())

    def render(self, name=lambda field: field) -> str:
        """The message with each field shown as `name(field)`."""
        text = self.message.format(**{field: name(field) for field in self.fields})
        return f"{self.owner}: {text}" if self.owner else text


def field_help(cls) -> dict[str, str]:
    """{field: help} parsed from the "Args:" sections of `cls.__doc__` and its dataclass bases' (continuation
    lines joined; a subclass's entry overrides its base's). Plain text, `%` and all: the CLI escapes it for
    argparse (`kvmesh.cli.flags.argparse_help`)."""
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


def check_choices(config) -> None:
    """Raise `ConfigError` for a field whose value is not among its `choices` (field metadata: a sequence, or a
    function that returns one). None passes: it means "not given"."""
    for field in dataclasses.fields(config):
        choices = field.metadata.get("choices")
        if choices is None:
            continue
        allowed = tuple(choices() if callable(choices) else choices)
        value = getattr(config, field.name)
        if value is not None and value not in allowed:
            names = ", ".join(map(str, allowed))
            raise ConfigError(f"{{{field.name}}} must be one of {names}, got {value!r}", type(config).__name__)
