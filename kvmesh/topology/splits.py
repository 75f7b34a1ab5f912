"""Disjoint training and validation sets for designers; the test set is the benchmark's, minus anything seen.

| benchmark | train                           | validation                           | test (`kvmesh design eval`) |
|-----------|---------------------------------|--------------------------------------|-----------------------------|
| infoqa    | the generator's train split     | its validation split                 | its test split              |
| gsm8k     | train.jsonl lines [0, n)        | train.jsonl lines [n, n + v)         | test.jsonl                  |
| humaneval | n problems of a seeded shuffle  | the next v problems of that shuffle  | the other 164 − n − v       |

InfoQA's splits share no person or place (`kvmesh.evals.infoqa`), so nothing a designer learns about one task
carries to another by name. A saved designer records every id it trained or validated on, and evaluation
leaves those ids out (`kvmesh.evals.runner`), which is what makes HumanEval's test set disjoint.
"""

from __future__ import annotations

import random

from kvmesh.evals.benchmarks import InfoQA, Sample, make_benchmark


def design_splits(
    benchmark: str,
    train_size: int,
    val_size: int,
    seed: int = 0,
    data_path: str | None = None,
    allow_code_execution: bool = False,
) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) samples for designing a team on `benchmark`; the two never share an id."""
    if train_size < 1 or val_size < 0:
        raise ValueError(f"need train_size >= 1 and val_size >= 0, got {train_size} and {val_size}")
    if benchmark == "infoqa":
        source = InfoQA(data_path, seed, count=max(train_size, val_size, 1))
        if data_path:
            raise ValueError("designer training on InfoQA uses the generator's splits; --data-path is for eval")
        train, val = source.samples("train")[:train_size], source.samples("validation")[:val_size]
    elif benchmark == "gsm8k":
        pool = make_benchmark("gsm8k", data_path).samples("train")
        train, val = pool[:train_size], pool[train_size : train_size + val_size]
    elif benchmark == "humaneval":
        pool = make_benchmark("humaneval", allow_code_execution=allow_code_execution).samples("test")
        random.Random(f"design-humaneval-{seed}").shuffle(pool)
        train, val = pool[:train_size], pool[train_size : train_size + val_size]
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose infoqa, gsm8k or humaneval")
    if len(train) < train_size or len(val) < val_size:
        raise ValueError(
            f"{benchmark} has {len(train)} training and {len(val)} validation samples for the sizes asked "
            f"({train_size}, {val_size}); ask for fewer"
        )
    return train, val
