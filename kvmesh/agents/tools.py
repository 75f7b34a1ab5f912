"""Agent tools: code that answers a turn instead of the model, or acts on the model's reply.

A tool has two hooks, both optional:

    before(turn) -> str | None    a reply that replaces the model call (None: call the model as usual)
    after(turn, reply) -> str     the reply the team sees (e.g. with a program's output appended)

The runtime calls `before` when a turn is scheduled, in the agent's tool order, and the first reply wins; a
turn answered this way costs no tokens and its message says which tool answered (`response_metadata["tool"]`).
`after` runs on every model reply, in order. Hooks run in the scheduler loop, so keep them short (a sandboxed
program with a timeout is fine; a network call is not).

Tools are named so team specs can list them (`tools: [run-python]`); `tool_from_name` builds one from its name.
Names come from `TOOLS` (a `kvmesh.plugins.Registry`): kvmesh's own, which live where their dependencies do (the
sandbox ones in `kvmesh.evals`, named here as strings and imported only when a spec names them), any installed
package's `kvmesh.tools` entry points, and `TOOLS.register(name, cls)` from code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmesh.plugins import PluginNotAvailableError, Registry

if TYPE_CHECKING:
    from kvmesh.agents.prompts import Inbound
    from kvmesh.agents.task import Task


@dataclass(frozen=True)
class ToolTurn:
    """What a tool sees of one turn: the task, who speaks, and the messages the agent would read."""

    task: Task
    agent: str
    round: int | str
    inbound: list[Inbound]


class Tool:
    """Base class: override `before`, `after` or both. `runs_code` marks tools that execute generated code."""

    name: str = "tool"
    runs_code: bool = False

    def before(self, turn: ToolTurn) -> str | None:
        return None

    def after(self, turn: ToolTurn, reply: str) -> str:
        return reply

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ToolNotAvailableError(PluginNotAvailableError):
    """A tool name no entry has; the message lists the tools there are and how to add one."""


TOOL_GROUP = "kvmesh.tools"  # other packages' entry points: name = "module:Class"

# name -> Tool class (built with no arguments)
TOOLS: Registry[type[Tool]] = Registry(
    "tool",
    TOOL_GROUP,
    {
        "run-python": "kvmesh.evals.tools:RunPython",
        "pass-tested-code": "kvmesh.evals.benchmarks.humaneval:PassTestedCode",
    },
    error=ToolNotAvailableError,
    adder="kvmesh.agents.tools.TOOLS.register(name, cls)",
)


def tool_from_name(name: str) -> Tool:
    """A new instance of the tool named `name`; `ToolNotAvailableError` (a ValueError) when there is none."""
    return TOOLS.get(name)()
