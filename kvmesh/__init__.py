"""kvmesh: teams of LLM agents on local Hugging Face models, talking as text or through shared KV caches.

from kvmesh import Agent, Team
team = Team([Agent("solver", role="math solver"), Agent("checker", role="checker")], graph="chain")
print(team.run("What is 17 * 3?").answer)
"""

from kvmesh.agents import Agent, SpecError, Task, Team, TeamResult, Usage, UsageReport
from kvmesh.graph import CommGraph, Edge, GraphError
from kvmesh.kvcomm import Channel, ChannelNotAvailableError, ReuseConfig, UnsupportedModelError
from kvmesh.llm import LanguageModel, LocalLM, ModelNotAvailableError, load_model

__version__ = "0.1.0"
__all__ = [
    "Agent",
    "Channel",
    "ChannelNotAvailableError",
    "CommGraph",
    "Edge",
    "GraphError",
    "LanguageModel",
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
