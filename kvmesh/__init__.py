"""kvmesh: teams of LLM agents on local Hugging Face models, talking as text or through shared KV caches.

from kvmesh import Agent, Team
team = Team([Agent("solver", role="math solver"), Agent("checker", role="checker")], graph="chain")
print(team.run("What is 17 * 3?").answer)
"""

from kvmesh.agents import (
    Agent,
    ChannelNotAvailableError,
    CommGraph,
    Edge,
    GraphError,
    SpecError,
    Task,
    Team,
    TeamResult,
    Usage,
    UsageReport,
)
from kvmesh.kvcomm import ReuseConfig, UnsupportedModelError
from kvmesh.llm import LocalLM, ModelNotAvailableError, load_model

__version__ = "0.1.0"
__all__ = [
    "Agent",
    "ChannelNotAvailableError",
    "CommGraph",
    "Edge",
    "GraphError",
    "LocalLM",
    "ModelNotAvailableError",
    "ReuseConfig",
    "SpecError",
    "Task",
    "Team",
    "TeamResult",
    "UnsupportedModelError",
    "Usage",
    "UsageReport",
    "__version__",
    "load_model",
]
