"""The benchmark roles' tools, run for real in the sandbox, and how the runner attaches them."""

import json

import pytest

from kvmesh import Task
from kvmesh.agents import Tool, ToolTurn
from kvmesh.agents.prompts import Inbound
from kvmesh.evals.benchmarks import HumanEval, benchmark_team
from kvmesh.evals.benchmarks.humaneval import PassTestedCode, load_humaneval
from kvmesh.evals.runner import EvalConfig, run_eval
from kvmesh.evals.tools import RunPython, printing_last_expression


def turn(*contents, task=None):
    inbound = [Inbound(f"agent_{i}", "spatial", "text", c) for i, c in enumerate(contents)]
    return ToolTurn(task or Task("Q?"), "me", 0, inbound)


def fenced(code):
    return f"Here is my program:\n```python\n{code}\n```\nThe answer is 3."


@pytest.mark.parametrize(
    "code, report",
    [
        ("print(48 / 2 + 48)", "Program output:\n72.0"),
        ("apples = 5\nbought = 7\napples + bought", "Program output:\n12"),  # a bare last expression is printed
        ("x = 1", "Program output:\n(nothing printed)"),
        ("print(1 / 0)", "Program error: ZeroDivisionError: division by zero"),
        ("while True:\n    pass", "Program output: (timed out)"),
    ],
)
def test_run_python_appends_what_the_program_printed(code, report):
    tool = RunPython()
    tool.limits = type(tool.limits)(timeout_s=2.0, cpu_s=2, memory_mb=512)
    reply = fenced(code)
    assert tool.after(turn(), reply) == f"{reply}\n\n{report}"


def test_run_python_leaves_replies_without_code_alone():
    assert RunPython().after(turn(), "The answer is 4.") == "The answer is 4."
    assert RunPython().after(turn(), "```js\nconsole.log(1)\n```") == "```js\nconsole.log(1)\n```"


def test_printing_last_expression():
    assert printing_last_expression("a = 2\na * 3") == "a = 2\nprint(a * 3)"
    assert printing_last_expression("print(1)") == "print(1)"
    assert printing_last_expression("def f(:") == "def f(:"  # a syntax error is left for the run to report


@pytest.fixture(scope="module")
def problem():
    return next(p for p in load_humaneval() if p.id == "HumanEval/0")


def humaneval_task(problem):
    return Task(problem.prompt, id=problem.id, metadata={"entry_point": problem.entry_point})


def test_pass_tested_code_passes_on_the_newest_working_function(problem):
    working = f"```python\n{problem.prompt}{problem.canonical_solution}```"
    broken = f"```python\ndef {problem.entry_point}(numbers, threshold):\n    return True\n```"
    tool = PassTestedCode()
    reply = tool.before(turn("no code here", working, broken, task=humaneval_task(problem)))
    assert reply == f"```python\n{(problem.prompt + problem.canonical_solution).strip()}\n```"
    assert tool.before(turn(broken, "prose", task=humaneval_task(problem))) is None
    assert tool.before(turn(working)) is None  # not a HumanEval-style task: nothing to check against


def test_humaneval_team_passes_working_code_on_without_model_calls(problem):
    class Canonical(Tool):  # stands in for a programmer who got it right
        name = "canonical"

        def before(self, turn):
            return f"```python\n{problem.prompt}{problem.canonical_solution}```"

    team = benchmark_team("humaneval", "tiny-random", "chain", agents=5, max_new_tokens=8, code_execution=True)
    programmer = next(a for a in team.agents if a.role == "programming expert")
    programmer.tools = (Canonical(),)
    result = team.run(humaneval_task(problem))
    calls = {name: usage.calls for name, usage in result.usage.per_agent.items()}
    assert calls == {
        "project_manager": 1,
        "algorithm_designer": 1,
        "programming_expert": 0,
        "test_analyst": 0,
        "bug_fixer": 0,
        "decision": 0,
    }
    benchmark = HumanEval(allow_code_execution=True)
    sample = next(s for s in benchmark.samples("test") if s.id == problem.id)
    assert benchmark.score(sample, result.answer).correct


def test_gsm8k_programmer_runs_code_only_with_permission():
    with_tools = benchmark_team("gsm8k", "tiny-random", "chain", agents=3, code_execution=True)
    assert [[t.name for t in a.tools] for a in with_tools.agents] == [[], [], ["run-python"]]
    assert "prints the answer" in with_tools.agents[2].system_prompt
    without = benchmark_team("gsm8k", "tiny-random", "chain", agents=3)
    assert all(not a.tools for a in without.agents)


def test_a_spec_whose_tools_run_code_needs_the_flag(tmp_path):
    spec = tmp_path / "team.json"
    spec.write_text(json.dumps({"agents": [{"name": "coder", "model": "tiny-random", "tools": ["run-python"]}]}))
    config = EvalConfig("infoqa", spec=str(spec), limit=1, shards="all")
    with pytest.raises(PermissionError, match=r"coder: run-python.*--allow-code-execution.*not a security boundary"):
        run_eval(config, tmp_path / "run", progress=False)
