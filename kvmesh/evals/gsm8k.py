"""GSM8K: grade-school math word problems with numeric answers (test 1,319, train 7,473).

Data: a local folder holding `train.jsonl` and `test.jsonl` (the openai/grade-school-math format, one
`{"question", "answer"}` object a line), given as `path` or through `KVMESH_GSM8K_PATH`; without one, the
Hugging Face dataset `openai/gsm8k` (`main`) through `datasets`, which needs network access. The project never
ships or commits the data.

Task ids are `test/N` and `train/N`, N the 0-based line in the split file (the dataset's row order). The gold
answer is the number after `####` in the answer text, normalised like every prediction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kvmesh.evals.numbers import extract_strict

ENV_VAR = "KVMESH_GSM8K_PATH"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class MathProblem:
    id: str
    question: str
    solution: str  # the reference worked solution, ending in "#### N"
    gold: str  # normalised number


def _problem(split: str, index: int, row: dict, where: str) -> MathProblem:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise ValueError(f"{where}: line {index + 1} needs string fields 'question' and 'answer'")
    gold = extract_strict(row["answer"])
    if gold is None:
        raise ValueError(f"{where}: line {index + 1} has no '#### N' final answer")
    return MathProblem(f"{split}/{index}", row["question"], row["answer"], gold)


def _from_folder(folder: Path, split: str) -> list[MathProblem]:
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K split file {path} does not exist (expected train.jsonl and test.jsonl)")
    problems = []
    with open(path) as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {index + 1} is not JSON: {error}") from error
            problems.append(_problem(split, index, row, str(path)))
    return problems


def _from_hub(split: str) -> list[MathProblem]:
    try:
        import datasets

        rows = datasets.load_dataset("openai/gsm8k", "main", split=split)
    except Exception as error:  # no `datasets`, no network, or the hub refused: say both ways out
        raise FileNotFoundError(
            f"GSM8K is not available: pass a folder with train.jsonl and test.jsonl (--data-path or {ENV_VAR}), "
            f"or install `datasets` and allow network access to load openai/gsm8k. ({type(error).__name__}: {error})"
        ) from error
    return [_problem(split, i, dict(row), "openai/gsm8k") for i, row in enumerate(rows)]


def load_gsm8k(split: str = "test", path: str | os.PathLike | None = None) -> list[MathProblem]:
    """Problems of `split` from `path`, else `$KVMESH_GSM8K_PATH`, else the Hugging Face hub."""
    if split not in SPLITS:
        raise ValueError(f"GSM8K split must be one of {SPLITS}, got {split!r}")
    folder = path or os.environ.get(ENV_VAR)
    if folder:
        return _from_folder(Path(folder).expanduser(), split)
    return _from_hub(split)
