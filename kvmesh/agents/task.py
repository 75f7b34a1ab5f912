"""Task: what a team is asked to do, with optional shared context and per-agent private shards.

A task also says how to read an answer out of a reply (`extract_answer`): the `majority` decision votes on
those answers. The default, `generic_answer`, is a heuristic for generic questions: an
"Answer:" label, else a final number, else the last line. Benchmarks pass their own extractor, which is also
what they score with.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

AnswerExtractor = Callable[[str], "str | None"]


# "Answer: X", "Final answer: X", "The answer is X" (not a bare "answer", which prose uses: "to answer this");
# the greedy ".*" makes a match start at the line's last label
_LABEL = re.compile(r".*\b(?:final\s+answer|answer)\s*(?:\bis\b\s*[:：]?|[:：])[\s*]*(.*)", re.IGNORECASE)
_FINAL_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d[\d,]*(?:\.\d+)?$")  # "-3" but not the "-" of "3-5"
_MARKUP = "*` "  # markdown emphasis and code marks around an answer ("**51**", "`x`")


def _clean(text: str) -> str:
    return text.rstrip(".,;:!" + _MARKUP).lstrip(_MARKUP)


def _result(text: str) -> str:
    """What follows the last "=" ("17 * 3 = 51." -> "51."), else the text."""
    return text.rpartition("=")[2] if "=" in text else text


def generic_answer(text: str) -> str | None:
    """Default answer extractor, for generic questions (benchmarks pass their own).

    In order: after the last "Answer:" / "Final answer:" / "The answer is" label (on the next line if the label
    ends its line), reduced to what follows a final "=" ("Answer: 17 * 3 = 51" -> "51"); else, when the last
    non-empty line ends with a number once trailing punctuation is stripped ("... = 51.", "So it is 51."), that
    number as written ("1,000" keeps its comma); else that last line. Surrounding whitespace, markdown emphasis
    and trailing punctuation are stripped; None when nothing is left. Case is kept: majority compares answers
    exactly, so "Paris" and "paris" are different votes.

    Caveat: a line that merely ends with a number ("See step 3") gives that number.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        label = _LABEL.match(lines[index])
        if label:
            after = label.group(1).strip() or (lines[index + 1] if index + 1 < len(lines) else "")
            return _clean(_result(after)) or None
    if not lines:
        return None
    last = _clean(lines[-1])
    number = _FINAL_NUMBER.search(_clean(_result(last)))
    return number.group() if number else last or None


@dataclass
class Task:
    """One problem for a team.

    Args:
        question: what every agent is asked.
        id: a stable identifier (benchmarks use e.g. `test/17`).
        context: text every agent reads.
        shards: private text per agent, by agent name (dict) or in the team's agent order (list); an agent
            reads only its own shard. This is how information-asymmetric tasks are posed.
        extract_answer: turns an agent's reply into the answer it votes for in `majority` decisions (None: no
            vote); replies whose answers are equal strings count together. Defaults to `generic_answer`, for generic
            questions; benchmarks pass their own (GSM8K the last number, InfoQA the text after "Answer:").
        metadata: anything else (gold answers, tests) carried through to the result untouched.
    """

    question: str
    id: str | None = None
    context: str | None = None
    shards: dict[str, str] | Sequence[str] | None = None
    extract_answer: AnswerExtractor = generic_answer
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
