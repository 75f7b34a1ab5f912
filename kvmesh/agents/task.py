"""Task: what a team is asked to do, with optional shared context and per-agent private shards."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

AnswerExtractor = Callable[[str], "str | None"]


def last_line(text: str) -> str | None:
    """Default answer extractor: the last non-empty line, with an 'Answer:' label removed."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    return re.sub(r"^(final answer|answer)\s*[:：]\s*", "", lines[-1], flags=re.IGNORECASE).strip() or None


@dataclass
class Task:
    """One problem for a team.

    Args:
        question: what every agent is asked.
        id: a stable identifier (benchmarks use e.g. `test/17`).
        context: text every agent reads.
        shards: private text per agent, by agent name (dict) or in the team's agent order (list); an agent
            reads only its own shard. This is how information-asymmetric tasks are posed.
        extract_answer: turns an agent's reply into a comparable answer, for `majority` decisions.
        metadata: anything else (gold answers, tests) carried through to the result untouched.
    """

    question: str
    id: str | None = None
    context: str | None = None
    shards: dict[str, str] | Sequence[str] | None = None
    extract_answer: AnswerExtractor = last_line
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("a task needs a non-empty question string")

    @classmethod
    def coerce(cls, task: Task | str) -> Task:
        if isinstance(task, Task):
            return task
        if isinstance(task, str):
            return cls(question=task)
        raise TypeError(f"a task must be a Task or a question string, got {type(task).__name__}")

    def check_shards(self, agent_names: Sequence[str]) -> None:
        if self.shards is None:
            return
        if isinstance(self.shards, dict):
            unknown = set(self.shards) - set(agent_names)
            if unknown:
                raise ValueError(f"task {self.id!r}: shards name unknown agents {sorted(unknown)}")
        elif len(self.shards) > len(agent_names):
            raise ValueError(
                f"task {self.id!r}: {len(self.shards)} shards for {len(agent_names)} agents; give at most one each"
            )

    def shard_for(self, agent: str, position: int) -> str | None:
        if self.shards is None:
            return None
        if isinstance(self.shards, dict):
            return self.shards.get(agent)
        return self.shards[position] if position < len(self.shards) else None
