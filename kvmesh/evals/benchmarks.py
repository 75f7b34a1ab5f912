"""The three benchmarks behind one interface: load samples, turn each into a team `Task`, score an answer.

Every path of a run, with a model, with `--oracle` (gold answers) or with `--completions` (answers from any
source), goes through the same `score`, so the oracle checks the scoring path itself.

Primary metric (`correct`, and `accuracy` in summaries):
- gsm8k: the flexible extractor's number equals the gold number; `strict` is reported beside it.
- humaneval: the program passes its tests in the sandbox (pass@1 with one sample per problem).
- infoqa: exact match of the short answer (after the last "Answer:", else the first line); token F1 beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kvmesh.agents import Task
from kvmesh.evals import gsm8k, humaneval, infoqa
from kvmesh.evals.numbers import extract_flexible, extract_strict, numbers_equal
from kvmesh.evals.sandbox import NOT_A_BOUNDARY, Limits, run_program

BENCHMARKS = ("gsm8k", "humaneval", "infoqa")


@dataclass
class Sample:
    id: str
    task: Task
    gold: str
    oracle: str  # an answer text that must score as correct
    extra: dict = field(default_factory=dict)


@dataclass
class Score:
    correct: bool
    extracted: object
    metrics: dict = field(default_factory=dict)  # per-sample values that summaries average


def short_answer(text: str) -> str:
    """The answer part of a reply: after the last "Answer:", else the first non-empty line."""
    matches = list(re.finditer(r"answer\s*[:：]\s*(.+)", text, flags=re.IGNORECASE))
    if matches:
        return matches[-1].group(1).strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _contains_words(text: str, phrase: str) -> bool:
    """`phrase` appears in `text` as whole words ("cat" is not in "located")."""
    return bool(phrase) and re.search(rf"(?:^| ){re.escape(phrase)}(?: |$)", text) is not None


class GSM8K:
    name = "gsm8k"

    def __init__(self, data_path: str | None = None) -> None:
        self.data_path = data_path

    def samples(self, split: str) -> list[Sample]:
        return [
            Sample(p.id, Task(p.question, id=p.id, extract_answer=extract_flexible), p.gold, p.solution)
            for p in gsm8k.load_gsm8k(split, self.data_path)
        ]

    def score(self, sample: Sample, answer: str) -> Score:
        strict, flexible = extract_strict(answer), extract_flexible(answer)
        correct = numbers_equal(flexible, sample.gold)
        return Score(
            correct,
            {"strict": strict, "flexible": flexible},
            {"strict": float(numbers_equal(strict, sample.gold)), "flexible": float(correct)},
        )


class HumanEval:
    name = "humaneval"

    def __init__(self, allow_code_execution: bool = False, limits: Limits | None = None) -> None:
        if not allow_code_execution:
            raise PermissionError(
                "HumanEval runs model-written code on this machine. Pass --allow-code-execution to accept that; "
                f"{NOT_A_BOUNDARY}."
            )
        self.limits = limits or Limits()

    def samples(self, split: str) -> list[Sample]:
        if split != "test":
            raise ValueError("HumanEval has only a test split")
        return [
            Sample(
                p.id,
                Task(p.prompt, id=p.id, metadata={"entry_point": p.entry_point}),
                "",
                p.canonical_solution,
                {"problem": p},
            )
            for p in humaneval.load_humaneval()
        ]

    def score(self, sample: Sample, answer: str) -> Score:
        problem = sample.extra["problem"]
        result = run_program(humaneval.build_program(problem, answer), self.limits)
        code = humaneval.extract_code(answer, problem.entry_point)
        details = {"status": result.status, "pass@1": float(result.passed)}
        if result.limit:
            details["limit"] = result.limit  # which limit stopped it: "wall-clock" or "cpu"
        return Score(result.passed, code, details)


SHARD_MODES = ("own", "all", "none")


class InfoQA:
    """`shards`: "own" (each agent reads only its shard: the benchmark), "all" (every agent reads every
    shard: the ceiling without communication) or "none" (nobody reads any: the floor)."""

    name = "infoqa"

    def __init__(
        self,
        data_path: str | None = None,
        seed: int = 0,
        count: int = 200,
        difficulty: infoqa.Difficulty | None = None,
        shards: str = "own",
    ) -> None:
        if shards not in SHARD_MODES:
            raise ValueError(f"InfoQA shards must be one of {SHARD_MODES}, got {shards!r}")
        self.data_path, self.seed, self.count, self.difficulty = data_path, seed, count, difficulty
        self.shards = shards

    def _task(self, t: infoqa.InfoQATask) -> Task:
        if self.shards == "all":
            return Task(t.question, id=t.id, context="\n".join(t.shards), extract_answer=short_answer)
        shards = t.shards if self.shards == "own" else None
        return Task(t.question, id=t.id, shards=shards, extract_answer=short_answer)

    def samples(self, split: str) -> list[Sample]:
        if self.data_path:
            tasks = infoqa.load_jsonl(self.data_path)
        else:
            tasks = infoqa.generate(self.count, split, self.seed, self.difficulty)
        return [Sample(t.id, self._task(t), t.answer, f"Answer: {t.answer}") for t in tasks]

    def score(self, sample: Sample, answer: str) -> Score:
        extracted = short_answer(answer)
        return Score(
            infoqa.exact_match(extracted, sample.gold),
            extracted,
            {
                "f1": infoqa.token_f1(extracted, sample.gold),
                "answer_in_reply": float(
                    _contains_words(infoqa.normalize_answer(answer), infoqa.normalize_answer(sample.gold))
                ),
            },
        )


def make_benchmark(
    name: str, data_path: str | None = None, seed: int = 0, allow_code_execution: bool = False, shards: str = "own"
):
    if name == "gsm8k":
        return GSM8K(data_path)
    if name == "humaneval":
        return HumanEval(allow_code_execution)
    if name == "infoqa":
        return InfoQA(data_path, seed, shards=shards)
    raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
