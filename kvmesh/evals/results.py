"""Committed result files and the README tables built from them (`kvmesh figures`, `make figures`).

Each headline figure lives in `results/<name>.json`, written by `record_result` at the end of the run that
measured it: the table's columns and rows, the command, seeds, configuration and how many times that
configuration was scored on test, plus provenance gathered here (git commit and whether the tree was dirty, UTC
date, machine, package versions). The README holds only the place of each table:

    <!-- figures:optima-infoqa -->
    (generated: `render_table` of results/optima-infoqa.json)
    <!-- /figures:optima-infoqa -->

`render_readme` rewrites every such block from its file and `check_readme` names the blocks that differ, so a
number typed into the README by hand, or a result file re-recorded without rebuilding the README, fails
`make figures-check`.

Caveats: the commit is that of the checkout kvmesh is imported from (null for an installed wheel, or without
git); `dirty` counts changes to tracked files only, so an uncommitted new module shows only through the tracked
files that import it. A cell is a number, a string, null, or `{"value": v, "ci95": [lo, hi]}`; files are
figures, not transcripts, so rows and text cells are capped (`MAX_ROWS`, `MAX_TEXT`). Markers count only on a
line of their own and outside fenced code, so the README can show the syntax.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kvmesh.runs import write_json

MAX_ROWS = 200  # a figure's table; more rows than this is per-task data, which stays in run folders
MAX_TEXT = 200  # characters of one text cell: labels, never model output
PACKAGES = ("torch", "transformers", "peft", "trl", "kvmesh")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")
MARKER = re.compile(r"<!--\s*(/?)figures:(.*?)\s*-->")
FENCE = re.compile(r"(`{3,}|~{3,})")
REQUIRED = ("name", "title", "command", "columns", "rows", "seeds", "config", "notes", "test_scorings")


class FiguresError(ValueError):
    """A result file or a README figure block that cannot be used as it is; the message says how to fix it."""


# --- recording -------------------------------------------------------------------------------------------------


def record_result(
    name: str,
    *,
    title: str,
    command: str,
    columns: list[dict],
    rows: list[dict],
    seeds: list[int] | None,
    config: dict,
    notes: str = "",
    test_scorings: int | None = None,
    folder: str | Path = "results",
) -> Path:
    """Write `folder/<name>.json` (atomically) holding one figure's table and where it came from.

    Args:
        name: the file stem, also the README block's name: letters, digits, `-` and `_`.
        title: what the figure shows, in a few words.
        command: the command that measured it, as a reader would rerun it.
        columns: `[{"key", "header", "format"}]`; `format` is a format spec such as ".3f" ("" for as is).
        rows: one dict per table row, keyed by the columns' keys (a missing key shows as "-"); a cell may be
            `{"value": v, "ci95": [lo, hi]}`. Extra keys are kept in the file but not shown.
        seeds: the seeds the figure covers (None where nothing is random).
        config: the configuration measured (JSON values only).
        notes: anything a reader needs to read the figure right.
        test_scorings: how many times this configuration was scored on the test split (None: not applicable).
        folder: where result files live.
    """
    result = {
        "name": name,
        "title": title,
        "command": command,
        "columns": columns,
        "rows": rows,
        "seeds": seeds,
        "config": config,
        "notes": notes,
        "test_scorings": test_scorings,
        "provenance": provenance(),
    }
    check_result(result, f"result {name!r}")
    result["columns"] = [{**column, "format": column.get("format", "")} for column in columns]  # one schema
    render_table(result)  # every cell formats with its column's spec before anything is written
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    write_json(path, result)
    return path


def provenance() -> dict:
    """Where and with what a result is being made: git state, UTC date, machine, package versions."""
    return {
        **_git_state(Path(__file__).resolve().parent),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "versions": {"python": platform.python_version()} | {p: _version(p) for p in PACKAGES},
    }


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine
        return None
    return done.stdout if done.returncode == 0 else None


def _git_state(folder: Path) -> dict:
    commit = _git(folder, "rev-parse", "HEAD")
    if commit is None:  # not a checkout (an installed wheel)
        return {"commit": None, "dirty": None}
    changes = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if changes is None else bool(changes.strip())}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # sysconf names vary by platform
        return None


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": _gpu(),
    }


# --- checking --------------------------------------------------------------------------------------------------


def check_result(result: dict, where: str) -> None:
    """Raise FiguresError, naming `where` and the field, unless `result` is a result file's content."""

    def refuse(message: str) -> None:
        raise FiguresError(f"{where}: {message}")

    if not isinstance(result, dict):
        refuse("is not a JSON object; make result files with kvmesh.evals.results.record_result")
    missing = [key for key in REQUIRED if key not in result]
    if missing:
        refuse(f"lacks {', '.join(missing)}; make result files with kvmesh.evals.results.record_result")
    if not isinstance(result["name"], str) or not NAME.fullmatch(result["name"]):
        refuse(f"name {result['name']!r} is not a safe file stem: use 1-80 letters, digits, '-' or '_'")
    for field in ("title", "command", "notes"):
        if not isinstance(result[field], str):
            refuse(f"{field} must be a string")
    if not result["command"].strip():
        refuse("command is empty: give the command that measured the figure, so a reader can rerun it")
    columns, rows = result["columns"], result["rows"]
    if not isinstance(columns, list) or not columns:
        refuse('columns must be a non-empty list of {"key", "header", "format"}')
    for column in columns:
        if not isinstance(column, dict) or not all(isinstance(column.get(k), str) for k in ("key", "header")):
            refuse(f'column {column!r} needs a string "key" and "header"')
        if not isinstance(column.get("format", ""), str):
            refuse(f"column {column['key']!r}: format must be a format spec string such as '.3f'")
    keys = [column["key"] for column in columns]
    if len(set(keys)) < len(keys):
        refuse(f"column keys repeat: {keys}")
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        refuse("rows must be a non-empty list of objects keyed by the columns' keys")
    if len(rows) > MAX_ROWS:
        refuse(f"has {len(rows)} rows, more than {MAX_ROWS}; a result file holds a figure's table, not per-task data")
    for number, row in enumerate(rows, 1):
        for key in keys:
            if problem := _cell_problem(row.get(key)):
                refuse(f"row {number}, column {key!r}: {problem}")
    seeds = result["seeds"]
    if seeds is not None and not (isinstance(seeds, list) and all(_is_int(s) for s in seeds)):
        refuse(f"seeds must be a list of integers or null, not {seeds!r}")
    scorings = result["test_scorings"]
    if scorings is not None and not (_is_int(scorings) and scorings >= 0):
        refuse(f"test_scorings must be a count (0 or more) or null, not {scorings!r}")
    if not isinstance(result["config"], dict):
        refuse("config must be an object (a dataclass config: dataclasses.asdict)")
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as error:
        refuse(f"holds something JSON cannot store ({error}); give plain numbers, strings, lists and objects")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell_problem(cell) -> str | None:
    """What is wrong with a table cell, or None."""
    if isinstance(cell, dict):
        if set(cell) - {"value", "ci95"} or "value" not in cell:
            return f'an interval cell is {{"value": v, "ci95": [lo, hi]}}, not {cell!r}'
        interval = cell.get("ci95")
        if interval is not None and not (
            isinstance(interval, list) and len(interval) == 2 and all(_is_number(x) for x in interval)
        ):
            return f"ci95 must be [lo, hi], two numbers, not {interval!r}"
        cell = cell["value"]
    if isinstance(cell, float) and not math.isfinite(cell):
        return f"{cell} is not a finite number; use null for a figure that was not measured"
    if isinstance(cell, str) and (len(cell) > MAX_TEXT or "\n" in cell):
        return f"text cells hold short labels (one line, at most {MAX_TEXT} characters), not transcripts"
    if cell is not None and not isinstance(cell, str | int | float):
        return f"a cell is a number, a string, null or an interval, not {type(cell).__name__}"
    return None


def load_result(path: Path) -> dict:
    """The result file at `path`, checked (FiguresError names the file and what is wrong)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise FiguresError(f"{path} is not valid JSON ({error}); remake it with record_result") from None
    check_result(result, str(path))
    if result["name"] != path.stem:
        raise FiguresError(f"{path} holds the result named {result['name']!r}; a file is named after its result")
    if not isinstance(result.get("provenance"), dict):  # where the figure came from is part of the figure
        raise FiguresError(f"{path} has no provenance (commit, date, machine, versions); remake it with record_result")
    return result


# --- rendering -------------------------------------------------------------------------------------------------


def _format(value, spec: str, where: str) -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (ValueError, TypeError):
        raise FiguresError(f"{where}: format {spec!r} cannot format {value!r}; fix the column's format") from None


def format_cell(cell, spec: str, where: str = "cell") -> str:
    """One cell as the table shows it: `spec` applied to the value (and to both ends of an interval); None "-"."""
    if isinstance(cell, dict):
        text = _format(cell["value"], spec, where)
        if cell.get("ci95") is not None:
            lo, hi = (_format(x, spec, where) for x in cell["ci95"])
            text += f" [{lo}, {hi}]"
        return text
    return _format(cell, spec, where).replace("|", r"\|")  # a bare | would split the cell


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def render_table(result: dict) -> str:
    """The markdown table of `result`, then one italic line: its file, command, commit, seeds (no final newline)."""
    columns = result["columns"]
    lines = [
        "| " + " | ".join(c["header"].replace("|", r"\|") for c in columns) + " |",
        "|" + "|".join("---:" if c.get("format") else "---" for c in columns) + "|",  # numbers right-aligned
    ]
    for number, row in enumerate(result["rows"], 1):
        where = f"result {result['name']!r}, row {number}"
        cells = [format_cell(row.get(c["key"]), c.get("format", ""), f"{where}, column {c['key']!r}") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    commit, dirty = result["provenance"].get("commit"), result["provenance"].get("dirty")
    source = [
        f"Source: `results/{result['name']}.json`",
        f"command {_code(result['command'])}",
        (f"commit `{commit[:7]}`" + (" (uncommitted changes)" if dirty else "")) if commit else "commit unknown",
        "seeds " + (", ".join(map(str, result["seeds"])) if result["seeds"] else "-"),
    ]
    if result["test_scorings"] is not None:
        source.append(f"scored on test {result['test_scorings']}×")
    # a blank line ends the table: a line without pipes right under it would be read as one more row
    return "\n".join(lines) + "\n\n*" + " · ".join(source) + "*"


# --- the README ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A figures block: its name and the 0-based line indexes of its opening and closing markers."""

    name: str
    start: int
    end: int


def find_blocks(lines: list[str]) -> list[Block]:
    """The figures blocks in a README's lines; FiguresError (naming the 1-based line) for a stray, unclosed,
    nested, duplicated or badly named marker."""
    blocks: list[Block] = []
    seen: dict[str, int] = {}
    opened: tuple[str, int] | None = None
    fence: str | None = None
    for index, line in enumerate(lines):
        text, number = line.strip(), index + 1
        if fence is not None:  # inside fenced code: markers there are examples
            fence = None if text.startswith(fence) and not text.strip(fence[0]) else fence
            continue
        if found := FENCE.match(text):
            fence = found.group(1)
            continue
        marker = MARKER.fullmatch(text)
        if marker is None:
            continue
        closing, name = marker.group(1) == "/", marker.group(2)
        if not NAME.fullmatch(name):
            raise FiguresError(f"line {number}: {text} does not name a result file (letters, digits, '-', '_')")
        if closing:
            if opened is None or opened[0] != name:
                inside = f"block {opened[0]!r} (line {opened[1]})" if opened else "no block"
                raise FiguresError(f"line {number}: {text} closes {name!r}, but it is inside {inside}")
            blocks.append(Block(name, opened[1] - 1, index))
            opened = None
        elif opened is not None:
            raise FiguresError(
                f"line {number}: block {name!r} opens inside block {opened[0]!r} (line {opened[1]}); "
                f"close that one first with <!-- /figures:{opened[0]} -->"
            )
        elif name in seen:
            raise FiguresError(
                f"line {number}: block {name!r} appears twice (lines {seen[name]} and {number}); keep one"
            )
        else:
            opened = (name, number)
            seen[name] = number
    if opened is not None:
        raise FiguresError(
            f"line {opened[1]}: block {opened[0]!r} is never closed; add <!-- /figures:{opened[0]} --> after it"
        )
    return blocks


def _rebuild(text: str, results_dir: Path) -> tuple[str, list[str]]:
    """`text` with every block rendered from `results_dir`, and the names of the blocks that changed."""
    lines = text.splitlines(keepends=True)
    out, changed, done = [], [], 0
    for block in find_blocks(lines):
        path = Path(results_dir) / f"{block.name}.json"
        if not path.is_file():
            raise FiguresError(
                f"line {block.start + 1}: block {block.name!r} needs {path}, which does not exist; record it with "
                "kvmesh.evals.results.record_result, or remove the block"
            )
        body = render_table(load_result(path)) + "\n"
        if "".join(lines[block.start + 1 : block.end]) != body:
            changed.append(block.name)
        out += [*lines[done : block.start + 1], body]
        done = block.end
    return "".join(out + lines[done:]), changed


def render_readme(text: str, results_dir: Path) -> str:
    """`text` (a README) with the content of each `<!-- figures:NAME -->` ... `<!-- /figures:NAME -->` block
    replaced by `render_table` of `results_dir/NAME.json`."""
    return _rebuild(text, results_dir)[0]


def check_readme(readme: Path, results_dir: Path) -> list[str]:
    """The names of the blocks of `readme` that differ from what `render_readme` would write (empty: in sync)."""
    return _rebuild(Path(readme).read_text(encoding="utf-8"), results_dir)[1]


def unused_results(readme: Path, results_dir: Path) -> list[str]:
    """The result files in `results_dir` that no block of `readme` shows (worth a look; not an error)."""
    named = {b.name for b in find_blocks(Path(readme).read_text(encoding="utf-8").splitlines(keepends=True))}
    results_dir = Path(results_dir)
    files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    return [str(path) for path in files if path.stem not in named]
