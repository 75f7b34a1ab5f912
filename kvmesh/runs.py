"""The run folder: how a long, resumable run decides to start or resume, checks its settings and writes its files.

Every folder whose work outlives a process goes through here: `kvmesh eval` (`kvmesh.evals.store`), `design
train` (`kvmesh.training.reinforce`), `optima train`, `c2c train`, `bench latent` and the kv-reuse anchor
folder. One rule for all of them:

- Fresh or resume (`check_resume`, `open_config`): a folder without saved settings starts fresh, whatever
  `resume` says; one with settings is refused unless `resume` is on (`RunExistsError`), and then unless the
  settings are the same (`RunChangedError`, naming each changed field, dotted when nested: `inputs.spec`).
  Settings hold what inputs contain (`content_hash`), so an edited file is a change too. A caller declares the
  exceptions: settings added after older runs were saved (`defaults`), records only one side may hold
  (`optional`), keys that never count (`ignore`) and changes it accepts (`allowed`, returned to be recorded).
- A failed start leaves nothing behind (`start_run`): a fresh start that fails before its first result (a line
  in one of the folder's JSONL logs, or what the caller's `results` counts) has what it wrote removed, so the
  corrected command starts afresh instead of being refused as a changed run.
- Atomic files (`write_atomic`, `write_json`): a temporary file in the same folder, fsynced, moved over the
  old one, so a crash leaves the old file or the new one, never a torn one. A hard crash may leave a stray
  `.NAME.*.tmp`, which nothing reads.
- Append-only JSONL logs (`JsonlWriter`, `append_jsonl`): each append is one write, flushed and fsynced before
  it returns, so a run killed at any moment loses at most the rows being written. A kill mid-write leaves a
  torn last line (no newline, or not JSON): readers skip an unterminated one, which may be being written right
  now (`read_log`), and a writer that resumes cuts it (`repair_log`). Any other line that is not JSON is an
  error naming the file and line.

Errors are `ConfigError`s (`RunFolderError`), so the CLI prints them as one line; `Wording` holds each command's
own words for what its folder holds and how to resume it. Caveat: only `hold_lock` stops a second process from
writing the same folder, and only `kvmesh eval` takes it; the other commands rely on being run once per folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kvmesh.config import ConfigError

CONFIG, LOCK = "config.json", ".lock"


class RunFolderError(ConfigError):
    """A run folder that cannot be used as asked (it holds another run, another process writes it, a log is
    corrupt)."""


class RunExistsError(RunFolderError, FileExistsError):
    """The folder holds a run and resuming was not asked for."""


class RunChangedError(RunFolderError):
    """The folder holds a run with other settings; `changed` names them."""

    def __init__(self, message: str, changed: list[str]) -> None:
        super().__init__(message)
        self.changed = changed


def _literal(text: object) -> str:
    """`text` inside a `ConfigError` message: its braces are not field names."""
    return str(text).replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class Wording:
    """A command's words in its refusals: `{name}` in them is a field, which the CLI shows as its flag.

    Args:
        noun: what the folder holds ("run", "fuser run").
        resume: how to resume it ("pass --resume").
        out: how to name another folder ("--out").
        settings: what differs, around `{changed}` (the changed fields, comma-separated).
    """

    noun: str = "run"
    resume: str = "pass --resume"
    out: str = "--out"
    settings: str = "other settings ({changed})"

    def exists(self, folder: Path) -> str:
        return f"{_literal(folder)} holds a {self.noun} already; resume it ({self.resume}) or pick another {self.out}"

    def changed(self, folder: Path, changed: list[str]) -> str:
        what = self.settings.replace("{changed}", _literal(", ".join(changed)))
        return (
            f"{_literal(folder)} holds a {self.noun} with {what}; use the settings it started with, or pick "
            f"another {self.out}"
        )

    def locked(self, folder: Path) -> str:
        return f"another process is writing to {_literal(folder)}; wait for it or pick another {self.out}"


RUN = Wording()  # the default words (`kvmesh eval` names what differs its own way: `EVAL_RUN`)


# --- settings ---------------------------------------------------------------------------------------------------


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (names and bytes, in name order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_MISSING = object()  # a key one side lacks: a change even where the other holds None


def _plain(value: Any) -> Any:
    """`value` as JSON reads it back (tuples become lists), so saved and current compare alike."""
    return json.loads(json.dumps(value))


def _differences(saved: Any, current: Any, where: str = "") -> list[str]:
    """Dotted names of what differs between two JSON values, one level deep (`inputs.spec`, `team.agents`)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current), key=str):
            old, new = saved.get(key, _MISSING), current.get(key, _MISSING)
            if old != new:
                inner = _differences(old, new, f"{where}{key}.")
                found += inner if where.count(".") < 1 and inner else [f"{where}{key}"]
        return found
    return [where.rstrip(".")] if saved != current else []


@dataclass(frozen=True)
class Comparison:
    """What may differ between a saved run's settings and the new ones without being a change.

    Args:
        defaults: settings added after older runs were saved: a saved run that lacks one resumes when the new
            value is its default (the run behaved that way); a default may be a function of the new settings.
        optional: records only one side may hold (older runs lack them; some are recorded only when they
            apply); compared when both do.
        ignore: keys never compared (where the folder is, thread counts).
        allowed: top-level settings that may change on resume; the changes are returned, not refused.
        upgrade: turns a saved run's settings into today's form, for settings older code recorded otherwise
            (applied before anything is compared; the saved file is left as it is).
    """

    defaults: dict[str, Any] = field(default_factory=dict)
    optional: Collection[str] = ()
    ignore: Collection[str] = ()
    allowed: Collection[str] = ()
    upgrade: Callable[[dict], dict] | None = None

    def changes(self, saved: dict, current: dict) -> list[str]:
        """Dotted names of the settings that differ, after the declared exceptions."""
        saved = _plain(self.upgrade(_plain(saved)) if self.upgrade is not None else saved)
        current = _plain(current)
        for key, value in self.defaults.items():
            value = _plain(value(current) if callable(value) else value)
            if key not in saved and current.get(key) == value:
                saved[key] = value
        for key in self.optional:
            if (key in saved) != (key in current):
                saved.pop(key, None)
                current.pop(key, None)
        saved = {k: v for k, v in saved.items() if k not in self.ignore}  # last: nothing above puts them back
        current = {k: v for k, v in current.items() if k not in self.ignore}
        return _differences(saved, current)


SAME = Comparison()  # nothing may differ


def check_resume(
    folder: Path, saved: dict | None, current: dict, resume: bool, wording: Wording = RUN, rules: Comparison = SAME
) -> list[str]:
    """Whether `folder` may run `current`: nothing `saved` starts fresh; a saved run needs `resume` and the same
    settings (`rules` says what may differ). Returns the allowed settings that changed; raises `RunExistsError`
    or `RunChangedError`."""
    if saved is None:
        return []
    if not resume:
        raise RunExistsError(wording.exists(folder))
    changed = rules.changes(saved, current)
    refused = [name for name in changed if name.split(".")[0] not in rules.allowed]
    if refused:
        raise RunChangedError(wording.changed(folder, refused), refused)
    return changed


@dataclass(frozen=True)
class Opened:
    """A run folder as `open_config` left it: `resumed` (False: a fresh start) and the allowed `changed` settings."""

    resumed: bool
    changed: list[str]


def read_json(path: Path) -> Any:
    """A JSON file this module wrote; one that cannot be read is a `RunFolderError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{_literal(path)} cannot be read ({_literal(error)}); pick another folder") from error


def open_config(
    folder: str | Path, config: dict, resume: bool, wording: Wording = RUN, rules: Comparison = SAME
) -> Opened:
    """Start or resume the run in `folder` with the settings `config` (`check_resume` against its config.json).
    A fresh start creates the folder and saves `config`; a resumed one leaves config.json as it is."""
    folder = Path(folder)
    path = folder / CONFIG
    saved = read_json(path) if path.is_file() else None
    changed = check_resume(folder, saved, config, resume, wording, rules)
    if saved is None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, config, sort_keys=True)
    return Opened(saved is not None, changed)


# --- a failed start ---------------------------------------------------------------------------------------------


def holds_results(folder: Path) -> bool:
    """Whether `folder` holds a finished result: a byte in one of its JSONL logs (at any depth)."""
    return any(path.is_file() and path.stat().st_size > 0 for path in Path(folder).rglob("*.jsonl"))


def entries(folder: str | Path) -> frozenset[str]:
    """The names in `folder` (none when it does not exist): what a start found there."""
    folder = Path(folder)
    return frozenset(p.name for p in folder.iterdir()) if folder.is_dir() else frozenset()


def discard_failed_start(
    folder: str | Path, keep: Collection[str] = frozenset(), results: Callable[[Path], bool] = holds_results
) -> bool:
    """Remove what a fresh start wrote into `folder` (every entry not named in `keep`), and the folder once empty,
    unless it holds a result; returns whether anything was removed. A folder with results is never touched."""
    folder = Path(folder)
    if not folder.is_dir() or results(folder):
        return False
    removed = False
    for item in folder.iterdir():
        if item.name not in keep:
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
            removed = True
    if not any(folder.iterdir()):
        folder.rmdir()
    return removed


@contextlib.contextmanager
def start_run(
    folder: str | Path, opening: Callable[[], Opened], results: Callable[[Path], bool] = holds_results
) -> Iterator[Opened]:
    """Open the run (`opening`, usually `open_config`) and run the body; if a fresh start raises before its first
    result, what it wrote is removed (`discard_failed_start`), so the corrected command is not refused."""
    before = entries(folder)
    opened = opening()
    try:
        yield opened
    except BaseException:
        if not opened.resumed:
            discard_failed_start(folder, before, results)
        raise


def hold_lock(folder: Path, wording: Wording = RUN) -> IO[str]:
    """An exclusive lock on `folder` (its `.lock` file) for as long as the returned handle is open; a folder
    another process holds is a `RunFolderError`."""
    handle = open(folder / LOCK, "w")  # noqa: SIM115 (the caller holds it open: that is the lock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderError(wording.locked(folder)) from None
    return handle


# --- atomic files -----------------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename or a new file in it survives a power cut (where the system allows it)."""
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write` into a temporary file in its folder, fsynced and moved over `path` once
    complete: a crash midway leaves the old file (and maybe a stray `.NAME.*.tmp`), never a torn one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a saved file is as any other
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_folder(path.parent)


def write_json(path: str | Path, data: Any, indent: int = 2, sort_keys: bool = False) -> None:
    """Write `data` as JSON (UTF-8, a final newline) to `path` atomically (`write_atomic`)."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def replace_folder(staging: str | Path, target: str | Path) -> None:
    """Move a complete folder built beside `target` (same file system) into its place in one rename; `target`
    must not exist or be an empty folder."""
    os.replace(staging, target)
    _sync_folder(Path(target).parent)


# --- append-only JSONL logs -------------------------------------------------------------------------------------


def _lines(rows: Iterable[Any]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


class JsonlWriter:
    """An append-only JSONL log held open: `append` writes its rows with one write and fsyncs them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        new = not self.path.exists()
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open; closed by close())
        if new:
            _sync_folder(self.path.parent)

    def append(self, rows: Iterable[Any]) -> None:
        """Append `rows` (JSON values, one line each) durably: written at once, flushed and fsynced."""
        self._handle.write(_lines(rows))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def append_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Append `rows` to the log at `path` durably (`JsonlWriter.append`)."""
    with JsonlWriter(path) as log:
        log.append(rows)


def rewrite_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Replace the log at `path` with `rows`, atomically (a kill leaves the old log or the new one)."""
    text = _lines(rows)
    write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def read_log(path: str | Path) -> list[Any]:
    """The rows of the log at `path` ([] when there is none). An unterminated last line is left out (it is
    being written, or was torn by a crash); any other line that is not JSON is a `RunFolderError`."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    text = data[: data.rfind(b"\n") + 1].decode("utf-8")  # an unterminated last line is not a row yet
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise RunFolderError(
                    f"{_literal(path)}:{number} is not valid JSON ({_literal(error)}); the file was edited or is "
                    "corrupt"
                ) from error
    return rows


def repair_log(path: str | Path) -> int:
    """Cut a torn last line (no final newline, or not JSON) off the log at `path`, as a writer does before it
    resumes appending; returns how many bytes were dropped."""
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    keep = len(data)
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    else:  # a complete last line, but it must parse
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[start:])
        except ValueError:  # not JSON, or not UTF-8
            keep = start
    if keep < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    return len(data) - keep
