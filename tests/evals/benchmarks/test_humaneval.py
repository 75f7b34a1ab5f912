import pytest

from kvmesh.evals.benchmarks.humaneval import build_program, extract_code, load_humaneval, pass_at_k, score


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def test_all_164_canonical_solutions_pass(problems):
    assert len(problems) == 164 and problems[0].id == "HumanEval/0" and problems[-1].id == "HumanEval/163"
    results = score(problems, [p.canonical_solution for p in problems])
    failed = [p.id for p, r in zip(problems, results, strict=True) if not r.passed]
    assert failed == []


def test_wrong_and_empty_completions_fail(problems):
    first = problems[0]
    results = score([first, first], ["    return True\n", ""])
    assert [r.status for r in results] == ["failed", "failed"]


def test_a_fenced_whole_function_is_extracted_and_runs(problems):
    problem = problems[2]  # truncate_number
    header = problem.prompt[problem.prompt.index(f"def {problem.entry_point}") :].split("\n")[0]
    reply = f"Here you go:\n```python\n{header}\n{problem.canonical_solution}```\nThis works because..."
    assert extract_code(reply, problem.entry_point).startswith(f"def {problem.entry_point}")
    assert score([problem], [reply])[0].passed


def test_extract_code_prefers_the_block_defining_the_entry_point():
    reply = "```python\nimport math\n```\ntext\n```py\ndef f(x):\n    return x\n```"
    assert extract_code(reply, "f") == "def f(x):\n    return x\n"
    assert extract_code("    return 1\n", "f") == "    return 1\n"  # bare body continuation
    assert extract_code("```python\ndef g():\n    pass", "f") == "def g():\n    pass"  # unterminated fence
    other_first = "```text\nexample\n```\n```python\ndef f(x):\n    return x\n```"
    assert extract_code(other_first, "f") == "def f(x):\n    return x\n"  # a non-Python block is skipped
    assert extract_code("```python\r\ndef f(x):\r\n    return x\r\n```", "f") == "def f(x):\n    return x\n"
    assert extract_code("Here is the solution:\ndef f(x):\n    return x\n", "f") == "def f(x):\n    return x\n"
    assert extract_code("```bash\nls\n```", "f") == "```bash\nls\n```"  # nothing Python: the raw reply


def test_program_layout(problems):
    problem = problems[0]
    program = build_program(problem, "    return False\n")
    assert program.startswith(problem.prompt) and program.rstrip().endswith(f"check({problem.entry_point})")


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(1, 1, 1, 1.0), (1, 0, 1, 0.0), (10, 3, 1, 0.3), (10, 0, 5, 0.0), (10, 8, 3, 1.0), (5, 2, 2, 1 - 3 / 10)],
)
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="correct <= n"):
        pass_at_k(3, 4, 1)


# Docstring examples that are wrong in the dataset itself: HumanEval/47's median example expects 15.0 for a
# list whose median is 8.0, and HumanEval/116's example is not valid Python as written.
BROKEN_DOCSTRINGS = {"HumanEval/47", "HumanEval/116"}


def test_docstring_examples_accept_canonical_solutions_and_reject_wrong_ones(problems):
    from kvmesh.evals.benchmarks.humaneval import docstring_examples_program
    from kvmesh.evals.sandbox import run_many

    checked = [p for p in problems if docstring_examples_program(p, p.canonical_solution)]
    assert len(checked) == 75  # prompts with usable >>> examples
    canonical = run_many([docstring_examples_program(p, p.canonical_solution) for p in checked])
    assert {p.id for p, r in zip(checked, canonical, strict=True) if not r.passed} == BROKEN_DOCSTRINGS
    wrong = run_many([docstring_examples_program(p, "    return None\n") for p in checked])
    assert not any(r.passed for r in wrong)
    without = next(p for p in problems if p not in checked)
    assert docstring_examples_program(without, without.canonical_solution) is None


def test_a_looping_completion_is_scored_as_a_timeout_with_its_limit():
    from kvmesh.evals.benchmarks import HumanEval
    from kvmesh.evals.sandbox import Limits

    benchmark = HumanEval(allow_code_execution=True, limits=Limits(timeout_s=60, cpu_s=1))
    sample = benchmark.samples("test")[0]
    score = benchmark.score(sample, "    while True:\n        pass\n")
    assert not score.correct and score.metrics == {"status": "timeout", "pass@1": 0.0, "limit": "cpu"}


def test_majority_on_humaneval_votes_on_the_code_not_the_closing_fence():
    from kvmesh.agents.decision import majority_vote
    from kvmesh.evals.benchmarks import HumanEval

    task = HumanEval(allow_code_execution=True).samples("test")[0].task
    entry = task.metadata["entry_point"]
    good = f"```python\ndef {entry}(numbers, threshold):\n    return True\n```"
    other = f"```python\ndef {entry}(numbers, threshold):\n    return False\n```"
    replies = [("a", other), ("b", good), ("c", "Here it is:\n" + good)]
    assert majority_vote(replies, task.extract_answer) == f"def {entry}(numbers, threshold):\n    return True"
