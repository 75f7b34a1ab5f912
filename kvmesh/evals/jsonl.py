"""Reading user-supplied JSONL files line by line, with errors that name the file and line.

Every error is a `ValueError` that starts with `path:line` (1-based, counting blank lines, as editors do), so
the CLI can print it as one line. Lines split at "\\n" only (a trailing "\\r" is JSON whitespace), each line is
decoded as UTF-8 on its own (a byte-order mark at the start of the file is allowed), and an object that repeats
a key is refused instead of silently keeping the last value. `field_error` words the message for a field of a
parsed line, so every reader reports "where: NAME must be EXPECTED, got FOUND" the same way.

Caveat: the file is read lazily, so a bad line is only reported when reading reaches it; callers that must
refuse the whole file before using any of it should collect the values first (a list), as the benchmarks do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

_SHOWN_CHARS = 80  # a found value is quoted in errors up to this length (shards can be long)


def _no_repeated_keys(where: str) -> Callable[[list[tuple[str, object]]], dict[str, object]]:
    def build(pairs: list[tuple[str, object]]) -> dict[str, object]:
        row: dict[str, object] = {}
        for key, value in pairs:
            if key in row:
                raise ValueError(f"{where}: key {key!r} appears twice in one object")
            row[key] = value
        return row

    return build


def _decode(raw: bytes, where: str, first: bool) -> str:
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as error:
        bad = raw[error.start : error.start + 1].hex()
        raise ValueError(
            f"{where}: not valid UTF-8 (byte 0x{bad} at byte {error.start + 1} of the line); save the file as UTF-8"
        ) from error


def read_jsonl(path: str | Path) -> Iterator[tuple[str, object]]:
    """Yield (`path:line`, parsed value) for every non-blank line; a line that is not UTF-8 JSON is an error."""
    path = Path(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            line = _decode(raw, where, first=number == 1)
            if not line.strip():
                continue
            try:
                yield where, json.loads(line, object_pairs_hook=_no_repeated_keys(where))
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error})") from error


def shown(value: object) -> str:
    """A found value for an error message, in JSON's words for null and booleans, cut to a readable length."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def field_error(where: str, name: str, expected: str, found: object) -> ValueError:
    """The error for field `name` of the line at `where`: "where: name must be EXPECTED, got FOUND"."""
    return ValueError(f"{where}: {name} must be {expected}, got {shown(found)}")
