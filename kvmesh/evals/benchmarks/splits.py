"""Train, validation and test splits that cannot leak, for every benchmark and for a user's own file.

    split_of("task-17", seed=0)                      # "train", "validation" or "test": a hash of id and seed
    assign_splits(ids, declared, seed)               # a file's lines: their own `split` field, else the hash
    SplitRule("file", by="hash", seed=0).to_dict()   # what a run records about where its tasks came from

A task's split depends only on its id and the split seed, never on the other tasks of the file, their order or
how many there are: adding lines to a file moves no old task between splits, so a model trained on a file's
train split has never seen its test split, however the file grows. Fractions are 60/20/20 (train/validation/
test) unless a benchmark says otherwise (GSM8K carves validation out of its own train file).

`ALL` is every task of a source whose tasks are all held out by default (a user's file that no loop trained on,
HumanEval's 164 problems): scoring uses it unless a split is asked for; learning loops never do.

Caveat: the hash gives each task its split independently, so a 10-line file's splits are only roughly 6/2/2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

SPLITS = ("train", "validation", "test")
ALL = "all"
SCORING_SPLITS = (*SPLITS, ALL)
FRACTIONS = (0.6, 0.2, 0.2)  # train, validation, test


def check_split(split: str, allowed: Sequence[str] = SCORING_SPLITS, source: str = "this benchmark") -> str:
    """`split` when `allowed` has it, else a ValueError naming the splits there are."""
    if split not in allowed:
        raise ValueError(f"{source} has the splits {', '.join(allowed)}; got {split!r}")
    return split


def split_of(task_id: str, seed: int = 0, fractions: Sequence[float] = FRACTIONS) -> str:
    """The split of task `task_id`: a uniform draw from sha256(seed, id), cut at the cumulative `fractions`."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {list(fractions)}")
    digest = hashlib.sha256(f"kvmesh-split:{seed}:{task_id}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for split, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction
        if draw < edge:
            return split
    return SPLITS[-1]


def assign_splits(
    ids: Sequence[str], declared: Sequence[str | None], seed: int = 0, source: str = "the file"
) -> tuple[list[str], str]:
    """Each task's split and how they were chosen ("field" or "hash").

    Either every task declares its split (a `split` field on each line) or none does: a file that mixes the two
    would put the undeclared tasks wherever the hash falls, beside tasks someone placed by hand.
    """
    given = [d for d in declared if d is not None]
    if not given:
        return [split_of(i, seed) for i in ids], "hash"
    if len(given) != len(declared):
        missing = next(i for i, d in zip(ids, declared, strict=True) if d is None)
        raise ValueError(
            f"{source}: {len(given)} of {len(declared)} tasks have a 'split' field (task {missing!r} has none); give "
            "every line one, or none and let the hash of the id decide"
        )
    for task_id, split in zip(ids, given, strict=True):
        check_split(split, SPLITS, f"{source} (task {task_id!r})")
    return list(given), "field"


@dataclass(frozen=True)
class SplitRule:
    """Where a run's tasks came from and how they were split, as its summary records it.

    Args:
        source: generator (a seeded generator's own splits), file (a user's file) or dataset (a benchmark's
            files, e.g. GSM8K's train and test).
        by: how tasks were assigned: generator, field (each line's `split`), hash (id and seed) or files.
        seed: the seed of the generator or the hash.
        split: the split the run scored.
    """

    source: str
    by: str
    seed: int
    split: str

    def to_dict(self) -> dict:
        return asdict(self)
