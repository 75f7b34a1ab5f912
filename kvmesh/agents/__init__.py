"""Agents, the communication graph, teams and the runtime that schedules them."""

from kvmesh.agents.agent import Agent
from kvmesh.agents.events import (
    AgentFinished,
    AgentStarted,
    BudgetExhausted,
    Event,
    MessageSent,
    RoundFinished,
    TeamFinished,
)
from kvmesh.agents.graph import CHANNELS, CommGraph, Edge, GraphError
from kvmesh.agents.result import TeamResult
from kvmesh.agents.spec import SpecError
from kvmesh.agents.task import Task
from kvmesh.agents.team import ChannelNotAvailableError, Team
from kvmesh.agents.tools import Tool, ToolTurn
from kvmesh.agents.usage import Usage, UsageReport

__all__ = [
    "CHANNELS",
    "Agent",
    "AgentFinished",
    "AgentStarted",
    "BudgetExhausted",
    "ChannelNotAvailableError",
    "CommGraph",
    "Edge",
    "Event",
    "GraphError",
    "MessageSent",
    "RoundFinished",
    "SpecError",
    "Task",
    "Team",
    "TeamFinished",
    "TeamResult",
    "Tool",
    "ToolTurn",
    "Usage",
    "UsageReport",
]
