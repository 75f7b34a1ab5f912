"""The crash-safe store of a run's results: `samples.jsonl` (one line per finished sample) beside `config.json`.

Every long loop that produces one result per item writes through it: the eval runner (a line per task) and
AGP's mining (a line per training task). The run folder's rules are `kvmesh.runs`'s; this module adds samples.

Crash safety: each finished sample is one JSON line, written with a single `write`, flushed and fsynced before
the next sample is counted, so a run killed at any moment (SIGKILL included) loses at most the sample being
written. A torn last line (the process died mid-write) is cut off on resume; every complete line is kept.
Resuming skips the ids already present, so a resumed run has no duplicates and no gaps.

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

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from kvmesh.runs import (
    Comparison,
    JsonlWriter,
    Wording,
    content_hash,
    discard_failed_start,
    hold_lock,
    open_config,
    read_log,
    repair_log,
)
from kvmesh.runs import RunFolderError as RunDirectoryError  # the name callers of the store know it by

SAMPLES = "samples.jsonl"
EVAL_RUN = Wording(settings="a different configuration or inputs (changed: {changed})")
# content_hash and RunDirectoryError are kvmesh.runs's, named here too for the store's callers
__all__ = ["ResultStore", "RunDirectoryError", "content_hash", "discard_if_empty", "open_run", "read_samples"]


def read_samples(folder: str | Path) -> list[dict]:
    """The finished samples of the run in `folder` ([] before the first)."""
    return read_log(Path(folder) / SAMPLES)


class ResultStore:
    """Append-only sample log of one run. Use `open_run` to create or resume one."""

    def __init__(self, folder: Path, lock: IO[str]) -> None:
        self.folder = folder
        self._lock = lock
        self.path = folder / SAMPLES
        self.done: set[str] = {str(row["id"]) for row in read_samples(folder)}
        self._log = JsonlWriter(self.path)

    def add(self, sample: dict) -> None:
        """Write one finished sample durably; a sample id may appear only once."""
        sample_id = str(sample["id"])
        if sample_id in self.done:
            raise ValueError(f"sample {sample_id!r} is already in {self.path}")
        self._log.append([sample])
        self.done.add(sample_id)

    def pending(self, ids: list[str]) -> list[str]:
        return [i for i in ids if str(i) not in self.done]

    def __iter__(self) -> Iterator[dict]:
        return iter(read_samples(self.folder))

    def close(self) -> None:
        self._log.close()
        self._lock.close()  # releases the lock

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def discard_if_empty(folder: str | Path, keep: frozenset[str] = frozenset()) -> bool:
    """Remove a run folder that holds no finished sample (what a failed start wrote), except entries named in
    `keep` that were there before; returns whether anything was removed. A run with samples is never touched."""
    return discard_failed_start(folder, keep)


def open_run(
    folder: str | Path,
    config: dict,
    resume: bool,
    defaults: dict[str, Any | Callable[[dict], Any]] | None = None,
    optional: tuple[str, ...] = (),
    upgrade: Callable[[dict], dict] | None = None,
    ignore: tuple[str, ...] = (),
) -> ResultStore:
    """Create `folder` for a new run, or reopen it with `resume=True` (same configuration required).

    `defaults`: settings added to the configuration after older runs were written; a saved run that lacks one
    resumes when the new value is its default (the run behaved that way). A default may be a function of the
    new configuration, for a setting whose old behaviour depends on others. `optional`: records that only one
    side may have (older runs lack them; a run records some only when they apply); compared when both do.
    `upgrade`: turns a saved configuration into today's form (settings older code recorded otherwise).
    `ignore`: settings never compared (file locations whose content the configuration records otherwise)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(folder, EVAL_RUN)
    try:
        rules = Comparison(defaults=defaults or {}, optional=optional, upgrade=upgrade, ignore=ignore)
        if open_config(folder, config, resume, EVAL_RUN, rules).resumed:
            repair_log(folder / SAMPLES)
    except BaseException:
        lock.close()
        raise
    return ResultStore(folder, lock)
