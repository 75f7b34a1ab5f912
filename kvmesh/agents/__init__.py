"""Agents, tasks and teams: the API (`Team`), and the scheduler that runs a team's turns on running batches.

A newcomer's path from `Team.run` to one batched model call: `team.py` (checks, `stream_batch`) ->
`scheduler.py` (`Scheduler.step`) -> `turn.py` (a turn's prompt, cache and rows) -> `kvmesh.llm.engine`.
"""

from kvmesh.agents.agent import Agent
from kvmesh.agents.events import (
    AgentFinished,
    AgentStarted,
    BudgetExhausted,
    ContextExceeded,
    Event,
    MessageSent,
    RoundFinished,
    TeamFinished,
    TokenGenerated,
)
from kvmesh.agents.result import TeamResult
from kvmesh.agents.spec import SpecError
from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.agents.tools import Tool, ToolTurn
from kvmesh.agents.usage import Usage, UsageReport

__all__ = [
    "Agent",
    "AgentFinished",
    "AgentStarted",
    "BudgetExhausted",
    "ContextExceeded",
    "Event",
    "MessageSent",
    "RoundFinished",
    "SpecError",
    "Task",
    "Team",
    "TeamFinished",
    "TeamResult",
    "TokenGenerated",
    "Tool",
    "ToolTurn",
    "Usage",
    "UsageReport",
]
