"""How many times each configuration, and each test set, was scored on test: "test scored once per configuration".

    keys = ScoringKeys.of(record, adapters)          # the configuration and the test set a run scores
    count = count_run(keys, run_id, out)          # at a fresh run's first scored task: one more look
    keys.configuration_scorings(run_id)           # how many looks this configuration had, this one included
    keys.test_set_scorings()                      # how many looks any configuration had at these test tasks

A configuration's key is a hash of what decides its score: the team (its settings, resolved spec and adapter
weights), the benchmark, its data (content hash), the split and the seed. Where the run is written, how fast it
runs (`batch_size`) and how many of the split's tasks it scores (`limit`, `exclude_ids`) do not count, so the same
team on a subset of the same test split is the same configuration. The test set's key is the benchmark, the data,
the split and the data seed alone: a recipe changed three times and scored three times on one test set is three
configurations, one look each, and three looks at that test set, which is what a reader must know.

A look is counted at a fresh run's first scored task, so a run stopped after it showed some test accuracy is
counted; resuming it is the same look (a run is its folder's config.json: its inode and time, so a folder
emptied and run again is a new look). Summaries record both counts (`test_scorings`, `test_set_scorings`), and
so does every results file built from them.

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
from dataclasses import dataclass
from pathlib import Path

from kvmesh.llm.registry import cache_dir

LEDGER_VARIABLE = "KVMESH_TEST_LEDGER"
TEST_SPLITS = ("test", "all")  # `all` of a held-out source is all test
# What changes how fast a run goes, where its files lie or how many of the split's tasks it scores, not the
# configuration: input files count by their content hashes (the record's `inputs`).
NOT_THE_CONFIGURATION = ("batch_size", "spec", "designer", "completions", "data_path", "team", "limit", "exclude_ids")


def ledger_path() -> Path:
    override = os.environ.get(LEDGER_VARIABLE)
    return Path(override).expanduser() if override else cache_dir() / "test-scorings.jsonl"


def fingerprint(record: dict, ignore: tuple[str, ...] = NOT_THE_CONFIGURATION) -> str:
    """A stable hash of a run's record (its settings, input hashes and resolved team), leaving out `ignore`."""
    kept = {key: value for key, value in record.items() if key not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rows() -> list[dict]:
    path = ledger_path()
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill: it never counted
            continue
    return rows


def run_id(folder: str | Path) -> str:
    """A run's identity: its folder's config.json (inode and modification time, which a fresh run sets)."""
    stat = (Path(folder) / "config.json").stat()
    return f"{Path(folder).resolve()}:{stat.st_ino}:{stat.st_mtime_ns}"


@dataclass(frozen=True)
class ScoringKeys:
    """The keys a run on test is counted under: its configuration and its test set."""

    configuration: str
    test_set: str

    @classmethod
    def of(cls, record: dict, adapters: dict | None = None) -> ScoringKeys:
        """From a run's record (`kvmesh.evals.runner.run_record`) and its adapters' content hashes (an adapter's
        weights are part of the team, though a spec names only its folder)."""
        data = (record.get("inputs") or {}).get("data")
        test_set = {key: record.get(key) for key in ("benchmark", "split", "seed")} | {"data": data}
        return cls(fingerprint(record | {"adapters": adapters or {}}), fingerprint(test_set, ignore=()))

    def configuration_scorings(self, run: str | None = None) -> int:
        """Looks this configuration had; with `run`, those up to and including that run's."""
        rows = [row for row in _rows() if row.get("fingerprint") == self.configuration]
        if run is not None:
            mine = [row["count"] for row in rows if row.get("run") == run]
            return mine[0] if mine else 0
        return len(rows)

    def test_set_scorings(self) -> int:
        """Looks any configuration had at this test set."""
        return sum(1 for row in _rows() if row.get("test_set") == self.test_set)


def count_run(keys: ScoringKeys, run: str, out: str | Path) -> int:
    """Count run `run` as one more look at test, unless it was counted already; returns its configuration's
    count up to and including this run."""
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            rows = [json.loads(line) for line in handle if line.strip().endswith("}")]
            mine = [r["count"] for r in rows if r.get("fingerprint") == keys.configuration and r.get("run") == run]
            if mine:
                return mine[0]
            count = 1 + sum(1 for r in rows if r.get("fingerprint") == keys.configuration)
            row = {"fingerprint": keys.configuration, "test_set": keys.test_set, "run": run, "count": count}
            handle.write(json.dumps(row | {"out": str(Path(out).resolve()), "time": time.time()}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            return count
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
