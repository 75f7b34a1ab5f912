"""How a team turns its agents' replies into one answer.

- `decision` (default): a final decision-maker agent reads every agent's last reply and answers.
- `majority`: a vote, with no extra model call. Each agent of the task's graph that replied votes once, with
  its reply from the latest round it spoke in, read by the task's `extract_answer` (the benchmark's own
  extractor on benchmark tasks, else `kvmesh.agents.task.generic_answer`). Votes are the extracted strings compared
  exactly: no normalisation here beyond what the extractor does (the default strips labels, markup and
  trailing punctuation but keeps case, so "Paris" and "paris" are two answers). A None or empty answer is no
  vote. The answer with the most votes wins; a tie goes to the answer of the earliest voter in the graph's agent
  order (the team's order for the team's own graph). The team's answer is the full reply of the first agent
  that gave the winning answer, so scorers read a reply, not an extracted fragment. With no vote at all it
  falls back to `last`.
- `last`: the reply of the last agent to speak in the final round. No extra model call.

The decision maker reads the agents' replies over `channel`: `text` (default) or `kv-reuse` (their caches).
Its turn is the decision step: its round is `DECISION_ROUND`, and the messages it reads arrive on implicit
edges of kind `kvmesh.graph.DECISION`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kvmesh.agents.agent import Agent
from kvmesh.agents.task import AnswerExtractor
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, check_channel

DECISION_METHOD, MAJORITY, LAST = "decision", "majority", "last"
METHODS = (DECISION_METHOD, MAJORITY, LAST)
DECISION_NAME = "decision"  # the decision maker's default agent name
DECISION_ROUND = "decision"  # the round of the decision step, in messages, events and usage
DECISION_SYSTEM = (
    "You are the decision maker of a team of agents. You read their messages, weigh them, and state the single "
    "final answer to the question. Be brief."
)


@dataclass
class Decision:
    method: str
    agent: Agent | None = None  # the decision maker, for method "decision"
    channel: str = DEFAULT_CHANNEL  # how the decision maker reads the agents' replies

    def __post_init__(self) -> None:
        check_channel(self.channel, "decision")

    @property
    def maker(self) -> bool:
        """Whether a decision-maker agent runs after the last round (method "decision")."""
        return self.method == DECISION_METHOD

    @classmethod
    def coerce(cls, value: str | Agent | dict | Decision, first_agent: Agent) -> Decision:
        """Accept a method name, a decision-maker `Agent`, or a spec dict (an agent's fields or {method}).

        A decision maker built here uses the first agent's model and token cap unless the spec says otherwise.
        """
        if isinstance(value, Decision):
            return value
        if isinstance(value, Agent):
            return cls(DECISION_METHOD, value)
        if isinstance(value, dict):
            fields = dict(value)
            method = fields.pop("method", DECISION_METHOD)
            channel = fields.pop("channel", DEFAULT_CHANNEL)
            if method != DECISION_METHOD and (fields or channel != DEFAULT_CHANNEL):
                raise ValueError(f"decision {method!r} takes no agent fields or channel, got {sorted(value)}")
            if method == DECISION_METHOD:
                fields.setdefault("name", DECISION_NAME)
                fields.setdefault("role", "decision maker")
                fields.setdefault("system_prompt", DECISION_SYSTEM)
                fields.setdefault("max_new_tokens", first_agent.max_new_tokens)
                fields.setdefault("model", first_agent.model)  # the object itself: it may have no spec to load
                return cls(DECISION_METHOD, Agent.from_dict(fields), channel)
            value = method
        if value not in METHODS:
            raise ValueError(f"unknown decision {value!r}; use one of {', '.join(METHODS)} or a decision Agent")
        if value == DECISION_METHOD:
            maker = Agent(
                DECISION_NAME,
                "decision maker",
                DECISION_SYSTEM,
                model=first_agent.model,
                max_new_tokens=first_agent.max_new_tokens,
            )
            return cls(DECISION_METHOD, maker)
        return cls(value)

    def to_spec(self) -> str | dict:
        if self.agent is None:
            return self.method
        channel = {"channel": self.channel} if self.channel != DEFAULT_CHANNEL else {}
        return {"method": DECISION_METHOD, **channel, **self.agent.to_dict()}


def majority_vote(replies: Sequence[tuple[str, str]], extract: AnswerExtractor) -> str | None:
    """The winning extracted answer of `majority_reply`, or None when no reply gave one."""
    winner = majority_reply(replies, extract)
    return None if winner is None else extract(winner)


def majority_reply(replies: Sequence[tuple[str, str]], extract: AnswerExtractor) -> str | None:
    """The full reply of the earliest agent whose extracted answer is the most common one.

    replies: (agent, text) in agent order. Answers are `extract(text)` compared as exact strings; a None or
    empty one does not vote. Among answers with the top count, the one given first in `replies` wins. None when
    no reply voted.
    """
    voted = [(text, answer) for _, text in replies if (answer := extract(text))]
    if not voted:
        return None
    counts = Counter(answer for _, answer in voted)
    best = max(counts.values())
    return next(text for text, answer in voted if counts[answer] == best)
