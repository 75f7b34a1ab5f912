"""Typed events that `Team.stream` yields, in the order things happen.

For one agent turn: one `MessageSent` per incoming message (with the edge's channel and the tokens it adds to
the receiver's prompt), then `AgentStarted` (with the exact prompt text), then, after the batched model call,
`AgentFinished` (with the reply and its usage); with token streaming on, `TokenGenerated` events carry the reply's
pieces between the two. Each round ends with `RoundFinished`; a task ends with
`TeamFinished` holding its `TeamResult`. `BudgetExhausted` marks the point where a task's token budget
stopped further work, `ContextExceeded` the point where a prompt outgrew its model's context. `task_index`
tells tasks apart inside `run_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

from langchain_core.messages import AIMessage

from kvmesh.agents.result import TeamResult
from kvmesh.agents.usage import Usage


@dataclass(frozen=True)
class Event:
    task_index: int

    @property
    def type(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class MessageSent(Event):
    source: str
    target: str
    round: int
    kind: str  # "spatial", "temporal" or "decision"
    channel: str
    tokens: int  # tokens of the receiver's prompt that carry this message
    kv_bytes: int = 0  # bytes of the sender's KV cache the receiver reads in place of text (0 on text edges)


@dataclass(frozen=True)
class AgentStarted(Event):
    agent: str
    round: int | str  # "decision" for the decision step
    prompt: str  # the exact text the model reads


@dataclass(frozen=True)
class TokenGenerated(Event):
    """A new piece of an agent's reply, as the model decodes it (`Team.stream(..., tokens=True)`); a turn's
    pieces join into its `AgentFinished` message's text before it is stripped."""

    agent: str
    round: int | str
    text: str


@dataclass(frozen=True)
class AgentFinished(Event):
    agent: str
    round: int | str
    message: AIMessage
    usage: Usage


@dataclass(frozen=True)
class RoundFinished(Event):
    round: int
    usage: Usage


@dataclass(frozen=True)
class BudgetExhausted(Event):
    budget: int
    spent: int
    skipped_agent: str
    round: int | str


@dataclass(frozen=True)
class ContextExceeded(Event):
    """A prompt that grew (from other agents' replies) past its model's context: the task stops here."""

    skipped_agent: str
    round: int | str
    message: str  # what `ContextLengthError` would say: the agent, the prompt's length, the limit, the fixes


@dataclass(frozen=True)
class TeamFinished(Event):
    result: TeamResult
