"""GSM8K: grade-school math word problems with numeric answers (test 1,319, train 7,473).

Data: a local folder holding `train.jsonl` and `test.jsonl` (the openai/grade-school-math format, one
`{"question", "answer"}` object a line), given as `path` or through `KVMESH_GSM8K_PATH`; without one, the
Hugging Face dataset `openai/gsm8k` (`main`) through `datasets`, which needs network access. The project never
ships or commits the data.

Task ids are `test/N` and `train/N`, N the 0-based line in the split file (the dataset's row order). The gold
answer is the number after `####` in the answer text, normalised like every prediction.

Scoring: `correct` when the flexible extractor's number (the last number in the reply) equals the gold number;
`strict` (the number after an explicit final-answer marker) is reported beside it.

Splits: test is test.jsonl; train.jsonl is cut into train (90%) and validation (10%) by a hash of each task's id
and the seed (`splits.py`), so loops that learn choose on validation lines they never trained on.

Team: a math solver, an analyst, a programmer and an inspector. With code execution the programmer writes a
program that is run, and its output is appended to its message (`RunPython`), so the agents downstream read
the program's result rather than the model's guess of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kvmesh.agents.task import Task
from kvmesh.agents.tools import Tool
from kvmesh.evals.benchmarks.base import Benchmark, BenchmarkOptions, Sample, Score
from kvmesh.evals.benchmarks.splits import SPLITS as SPLIT_NAMES
from kvmesh.evals.benchmarks.splits import SplitRule, check_split, split_of
from kvmesh.evals.numbers import extract_flexible, extract_strict, numbers_equal
from kvmesh.evals.tools import RunPython

ENV_VAR = "KVMESH_GSM8K_PATH"
SPLITS = ("train", "test")  # the dataset's files
VALIDATION_SHARE = 0.1  # of train.jsonl


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


PROGRAMMER = "programming expert"
# With code execution the programmer writes a program to be run instead of stating its result.
PROGRAMMER_WITH_EXECUTION = (
    "Write a Python program in one ```python block that computes and prints the answer. It will be run and "
    "your team will see what it prints."
)


class GSM8K(Benchmark):
    name = "gsm8k"
    ROLES = (
        ("math solver", "Solve the problem step by step with exact arithmetic. End with: The answer is N."),
        (
            "mathematical analyst",
            "Check the reasoning you are given, find mistakes, and give the correct result. End with: The answer is N.",
        ),
        (
            PROGRAMMER,
            "Write a short Python calculation for the problem and state its result. End with: The answer is N.",
        ),
        ("inspector", "Compare your team's answers and keep the one that is correct. End with: The answer is N."),
    )
    DECISION_PROMPT = "Read your team's solutions and give the final answer. End with: The answer is N."

    def __init__(self, data_path: str | None = None, seed: int = 0) -> None:
        self.data_path, self.seed = data_path, seed

    @classmethod
    def from_options(cls, options: BenchmarkOptions) -> GSM8K:
        return cls(options.data_path, options.seed)

    def samples(self, split: str) -> list[Sample]:
        check_split(split, SPLIT_NAMES, "GSM8K")
        problems = load_gsm8k("test" if split == "test" else "train", self.data_path)
        if split != "test":
            shares = (1 - VALIDATION_SHARE, VALIDATION_SHARE, 0.0)
            problems = [p for p in problems if split_of(p.id, self.seed, shares) == split]
        return [
            Sample(p.id, Task(p.question, id=p.id, extract_answer=extract_flexible), p.gold, p.solution)
            for p in problems
        ]

    def split_rule(self, split: str) -> SplitRule:
        return SplitRule("dataset", "files" if split == "test" else "hash", self.seed, split)

    def score(self, sample: Sample, answer: str) -> Score:
        strict, flexible = extract_strict(answer), extract_flexible(answer)
        correct = numbers_equal(flexible, sample.gold)
        return Score(
            correct,
            {"strict": strict, "flexible": flexible},
            {"strict": float(numbers_equal(strict, sample.gold)), "flexible": float(correct)},
        )

    @classmethod
    def tools(cls, role: str) -> tuple[Tool, ...]:
        return (RunPython(),) if role == PROGRAMMER else ()

    @classmethod
    def instruction(cls, role: str, prompt: str, tools) -> str:
        return PROGRAMMER_WITH_EXECUTION if tools else prompt
