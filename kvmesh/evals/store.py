"""The crash-safe store of a run's results: `samples.jsonl` (one line per finished sample) beside `config.json`.

Every long loop that produces one result per item writes through it: the eval runner (a line per task), AGP's
mining (a line per training task), and the training loops to come.

Crash safety: each finished sample is one JSON line, written with a single `write`, flushed and fsynced before
the next sample is counted, so a run killed at any moment (SIGKILL included) loses at most the sample being
written. A torn last line (the process died mid-write) is detected on resume and cut off; every complete
line is kept. Resuming skips the ids already present, so a resumed run has no duplicates and no gaps.

Only one process may write a run at a time (an exclusive lock on `.lock`): a second `open_run` on the same
folder fails instead of duplicating samples. Readers ignore an unterminated last line, which is either being
written right now or was torn by a crash.

A resumed run must use the configuration it started with: `open_run` compares the saved `config.json` with
the new one and refuses a mismatch, naming what changed (a different model or seed would silently mix two
experiments). Callers record what their inputs hold, not only where they are (`content_hash` of a spec or
data file), so an edited file is a change too. A fresh run that fails before its first sample leaves
nothing behind (`discard_if_empty`), so the corrected command can start it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

SAMPLES, CONFIG, LOCK = "samples.jsonl", "config.json", ".lock"


class RunDirectoryError(ValueError):
    """The output folder cannot be used as asked (exists without --resume, or holds another run)."""


def _repair_tail(path: Path) -> int:
    """Cut a torn final line (no trailing newline, or not JSON); returns how many bytes were dropped."""
    data = path.read_bytes()
    if not data:
        return 0
    keep = len(data)
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    else:  # complete last line, but check it parses
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[start:])
        except json.JSONDecodeError:
            keep = start
    if keep < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)
    return len(data) - keep


def read_samples(folder: str | Path) -> list[dict]:
    path = Path(folder) / SAMPLES
    if not path.is_file():
        return []
    text = path.read_text()
    if not text.endswith("\n"):  # the last line is being written, or was torn by a crash
        text = text[: text.rfind("\n") + 1]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise RunDirectoryError(f"{path}:{number} is not valid JSON ({error})") from error
    return rows


class ResultStore:
    """Append-only sample log of one run. Use `open_run` to create or resume one."""

    def __init__(self, folder: Path, lock) -> None:
        self.folder = folder
        self._lock = lock
        self.path = folder / SAMPLES
        self.done: set[str] = {str(row["id"]) for row in read_samples(folder)}
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open; closed by close())

    def add(self, sample: dict) -> None:
        """Write one finished sample durably; a sample id may appear only once."""
        sample_id = str(sample["id"])
        if sample_id in self.done:
            raise ValueError(f"sample {sample_id!r} is already in {self.path}")
        self._handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.done.add(sample_id)

    def pending(self, ids: list[str]) -> list[str]:
        return [i for i in ids if str(i) not in self.done]

    def __iter__(self) -> Iterator[dict]:
        return iter(read_samples(self.folder))

    def close(self) -> None:
        self._handle.close()
        self._lock.close()  # releases the lock

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def discard_if_empty(folder: str | Path, keep: frozenset[str] = frozenset()) -> bool:
    """Remove a run folder that holds no finished sample (what a failed start wrote), except files named in
    `keep` that were there before; returns whether anything was removed. A run with samples is never touched."""
    folder, samples = Path(folder), Path(folder) / SAMPLES
    if not folder.is_dir() or (samples.exists() and samples.stat().st_size > 0):
        return False
    removed = False
    for item in folder.iterdir():
        if item.is_file() and item.name not in keep:
            item.unlink()
            removed = True
    if not any(folder.iterdir()):
        folder.rmdir()
    return removed


def open_run(
    folder: str | Path,
    config: dict,
    resume: bool,
    defaults: dict | None = None,
    optional: tuple[str, ...] = (),
) -> ResultStore:
    """Create `folder` for a new run, or reopen it with `resume=True` (same configuration required).

    `defaults`: settings added to the configuration after older runs were written; a saved run that lacks one
    resumes when the new value is its default (the run behaved that way). A default may be a function of the
    new configuration, for a setting whose old behaviour depends on others. `optional`: records that only one
    side may have (older runs lack them; a run records some only when they apply); compared when both do."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / LOCK, "w")  # noqa: SIM115 (held for the life of the store)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RunDirectoryError(f"another process is writing to {folder}; wait for it or pick another --out") from None
    try:
        _prepare(folder, config, resume, defaults or {}, optional)
    except BaseException:
        lock.close()
        raise
    return ResultStore(folder, lock)


_MISSING = object()  # a key one side lacks: a change even where the other holds None


def _changes(saved, current, where: str = "") -> list[str]:
    """Dotted names of what differs between two JSON values (`inputs.spec`, `team.agents`)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current), key=str):
            old, new = saved.get(key, _MISSING), current.get(key, _MISSING)
            if old != new:
                inner = _changes(old, new, f"{where}{key}.")
                found += inner if where.count(".") < 1 and inner else [f"{where}{key}"]
        return found
    return [where.rstrip(".")] if saved != current else []


def _prepare(folder: Path, config: dict, resume: bool, defaults: dict, optional: tuple[str, ...]) -> None:
    config_path = folder / CONFIG
    if config_path.exists():
        if not resume:
            raise RunDirectoryError(f"{folder} already holds a run; pass --resume to continue it or pick another --out")
        saved = json.loads(config_path.read_text())
        current = json.loads(json.dumps(config))
        for key, value in defaults.items():
            value = json.loads(json.dumps(value(current) if callable(value) else value))
            if key not in saved and current.get(key) == value:
                saved[key] = value
        for key in optional:
            if (key in saved) != (key in current):
                saved.pop(key, None)
                current.pop(key, None)
        if saved != current:
            changed = ", ".join(_changes(saved, current))
            raise RunDirectoryError(
                f"{folder} holds a run with a different configuration or inputs (changed: {changed}); resume it with "
                "what it started with, or pick another --out"
            )
        if (folder / SAMPLES).exists():
            _repair_tail(folder / SAMPLES)
    else:
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
