"""Agent tools: code that answers a turn instead of the model, or acts on the model's reply.

A tool has two hooks, both optional:

    before(turn) -> str | None    a reply that replaces the model call (None: call the model as usual)
    after(turn, reply) -> str     the reply the team sees (e.g. with a program's output appended)

The runtime calls `before` when a turn is scheduled, in the agent's tool order, and the first reply wins; a
turn answered this way costs no tokens and its message says which tool answered (`response_metadata["tool"]`).
`after` runs on every model reply, in order. Hooks run in the scheduler loop, so keep them short (a sandboxed
program with a timeout is fine; a network call is not).

Tools are named so team specs can list them (`tools: [run-python]`); `tool_from_name` builds one from its name.
Names come from the `kvmesh.tools` entry-point group, so any installed package can add tools; kvmesh's own
live where their dependencies do (the sandbox ones in `kvmesh.evals`) and are declared in its pyproject.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

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


TOOL_GROUP = "kvmesh.tools"  # entry points: name = "module:Class"


def tool_from_name(name: str) -> Tool:
    found = {point.name: point for point in entry_points(group=TOOL_GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none (is kvmesh installed? its tools are entry points)"
        raise ValueError(f"unknown tool {name!r}; known tools: {known}")
    return found[name].load()()
