"""How many times each configuration was scored on test: the ledger behind "test scored once per configuration".

    count = record_test_scoring(fingerprint, out)   # at the fresh start of a run that scores test tasks
    scorings(fingerprint)                           # how many fresh starts that configuration has had

A configuration's fingerprint is a hash of what decides its score: the team (resolved spec), the benchmark,
its data (content hash), the split, the tasks (limit, exclusions) and the seed; where the run is written does
not count, so scoring the same team on the same test tasks in a second folder is a second scoring. Resuming a
run is not a new scoring. Every run summary records the count (`test_scorings`), and so does every results file
built from it, so a reader sees when a figure was chosen among several looks at the test set.

The ledger is one JSONL file per machine, `$KVMESH_CACHE/test-scorings.jsonl` (override with
`KVMESH_TEST_LEDGER`), appended under an exclusive lock. Caveat: it counts what this machine ran; a team scored
elsewhere, or a ledger deleted, is not counted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from kvmesh.llm.registry import cache_dir

LEDGER_VARIABLE = "KVMESH_TEST_LEDGER"
TEST_SPLITS = ("test", "all")  # `all` of a held-out source is all test


def ledger_path() -> Path:
    override = os.environ.get(LEDGER_VARIABLE)
    return Path(override).expanduser() if override else cache_dir() / "test-scorings.jsonl"


# What changes how fast a run goes or where its files lie, not what it scores: the input files count by their
# content hashes (the record's `inputs`), so a moved spec or data file is the same configuration.
NOT_THE_CONFIGURATION = ("batch_size", "spec", "designer", "completions", "data_path", "team")


def fingerprint(record: dict, ignore: tuple[str, ...] = NOT_THE_CONFIGURATION) -> str:
    """A stable hash of a run's record (its settings, input hashes and resolved team), leaving out `ignore`."""
    kept = {key: value for key, value in record.items() if key not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill: it never counted
            continue
    return rows


def scorings(key: str) -> int:
    """How many fresh test scorings configuration `key` has had on this machine."""
    return sum(1 for row in _rows(ledger_path()) if row.get("fingerprint") == key)


def record_test_scoring(key: str, out: str | Path) -> int:
    """Count one more test scoring of configuration `key` (a fresh run into `out`); returns the new count."""
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            count = 1 + sum(1 for line in handle if f'"fingerprint": "{key}"' in line)
            row = {"fingerprint": key, "out": str(Path(out).resolve()), "time": time.time(), "count": count}
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return count
