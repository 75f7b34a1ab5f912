"""`RunPython`: a tool that runs the Python block of a reply in the sandbox and appends what it printed.

The GSM8K programmer uses it, so the agents downstream read the program's result rather than the model's guess
of it; it runs generated code, so it needs `--allow-code-execution`. A trailing bare expression is printed, as
in a notebook cell, because small models often end with `total` instead of `print(total)`. (HumanEval's
`PassTestedCode` lives with HumanEval, in `kvmesh.evals.benchmarks.humaneval`.)
"""

from __future__ import annotations

import ast
import re

from kvmesh.agents.tools import Tool, ToolTurn
from kvmesh.evals.sandbox import Limits, run_program

_FENCED_PYTHON = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
TOOL_LIMITS = Limits(timeout_s=5.0, cpu_s=5, memory_mb=512)  # tighter than scoring: a tool runs mid-turn
OUTPUT_CHARS = 400  # the most program output passed on; enough for a number, bounded for the next prompt


def printing_last_expression(source: str) -> str:
    """`source` with a final bare expression (other than a call to print) wrapped in `print(...)`."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        return source
    call = last.value
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print":
        return source
    last.value = ast.Call(ast.Name("print", ast.Load()), [call], [])
    return ast.unparse(ast.fix_missing_locations(tree))


class RunPython(Tool):
    """Run the reply's last fenced Python block and append its output (or its error) to the reply."""

    name = "run-python"
    runs_code = True

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or TOOL_LIMITS

    def after(self, turn: ToolTurn, reply: str) -> str:
        blocks = [b for b in _FENCED_PYTHON.findall(reply) if b.strip()]
        if not blocks:
            return reply
        result = run_program(printing_last_expression(blocks[-1]), self.limits)
        if result.status == "timeout":
            report = "Program output: (timed out)"
        elif result.passed:
            report = f"Program output:\n{result.stdout.strip()[-OUTPUT_CHARS:] or '(nothing printed)'}"
        else:
            error = [line for line in result.stderr.strip().splitlines() if line.strip()]
            report = f"Program error: {error[-1][-OUTPUT_CHARS:] if error else 'exit status ' + str(result.returncode)}"
        return f"{reply}\n\n{report}"
