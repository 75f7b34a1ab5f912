"""The `Benchmark` protocol every benchmark implements, and the team a benchmark run uses by default.

A benchmark is one file (`gsm8k.py`, `humaneval.py`, `infoqa.py`) that says everything about itself:

    samples(split)            its data as `Sample`s: a team `Task`, the gold answer, an oracle answer; split is
                              train, validation, test (disjoint, `splits.py`) or all (every task of a held-out source)
    default_split(data)       what scoring reads unless a split is asked for: test, or all for a held-out source
    split_rule(split)         how the split's tasks were chosen, as run summaries record it
    score(sample, answer)     the primary metric (`correct`) and the values summaries average
    reward(sample, result)    what designers (and training loops) maximise: 1.0 when the team's answer is correct
    design_splits(n, v, seed) the first n train and v validation samples, for loops that learn
    ROLES, DECISION_PROMPT    its roles, in order ((role, instruction) pairs), and its decision maker's instruction
    examples(role), tools(role)  few-shot turns and code-running tools a role gets
    terse_examples(role)      the same turns with the shortest replies that still do the job (compact protocols)

Every path of a run, with a model, with `--oracle` (gold answers) or with `--completions` (answers from any
source), goes through the same `score`, so the oracle checks the scoring path itself. Roles and prompts are
written for kvmesh; the decision maker is told the answer format the scorer reads, so the final reply is
extractable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from kvmesh.agents.agent import Agent
from kvmesh.agents.decision import DECISION_METHOD, DECISION_NAME, LAST, Decision
from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.agents.tools import Tool
from kvmesh.evals.benchmarks.splits import SplitRule
from kvmesh.graph.graph import CommGraph

SINGLE = "single"  # the topology of one agent answering alone: the baseline
SOLO, DECISION_MAKER = "solo", "decision maker"  # role names of a lone agent and of the decision maker


@dataclass
class Sample:
    id: str
    task: Task
    gold: str
    oracle: str  # an answer text that must score as correct
    extra: dict = field(default_factory=dict)


@dataclass
class Score:
    correct: bool
    extracted: object
    metrics: dict = field(default_factory=dict)  # per-sample values that summaries average


@dataclass(frozen=True)
class BenchmarkOptions:
    """A run's settings that a benchmark may take (`make_benchmark`); each takes the ones it uses."""

    data_path: str | None = None
    seed: int = 0
    allow_code_execution: bool = False
    shards: str = "own"


class Benchmark:
    """Base class: subclasses set the class attributes and implement `samples` and `score`; one whose constructor
    takes arguments overrides `from_options`. Other packages add benchmarks as `kvmesh.benchmarks` entry points."""

    name: ClassVar[str] = ""
    ROLES: ClassVar[tuple[tuple[str, str], ...]] = ()
    DECISION_PROMPT: ClassVar[str] = ""

    @classmethod
    def from_options(cls, options: BenchmarkOptions) -> Benchmark:
        """The benchmark for a run's settings (default: built with no arguments, ignoring them)."""
        return cls()

    def samples(self, split: str) -> list[Sample]:
        raise NotImplementedError

    @classmethod
    def default_split(cls, data_path: str | None = None) -> str:
        """The split scoring reads unless one is asked for (given the run's data file or folder)."""
        return "test"

    def split_rule(self, split: str) -> SplitRule:
        """How `split`'s tasks were chosen (what a run's summary records); a benchmark that does not say is
        recorded as such."""
        return SplitRule(self.name or type(self).__name__, "unknown", 0, split)

    def score(self, sample: Sample, answer: str) -> Score:
        raise NotImplementedError

    def reward(self, sample: Sample, result) -> float:
        """1.0 when the team's answer (`result`: a `TeamResult`) scores as correct, else 0.0."""
        return float(self.score(sample, result.answer or "").correct)

    def design_splits(self, train_size: int, val_size: int, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
        """The first `train_size` train and `val_size` validation samples; the splits never share an id.
        (`seed` is for benchmarks that draw them; the default reads the splits as they are.)"""
        train, val = self.samples("train")[:train_size], self.samples("validation")[:val_size]
        check_design_sizes(self.name, train, val, train_size, val_size)
        return train, val

    @classmethod
    def agent_name(cls, index: int, role: str) -> str:
        return role.replace(" ", "_") + ("" if index < len(cls.ROLES) else f"_{index}")

    @classmethod
    def examples(cls, role: str) -> tuple[tuple[str, str], ...]:
        """Few-shot (user turn, reply) pairs for `role` (`SOLO` for a lone agent, `DECISION_MAKER`)."""
        return ()

    @classmethod
    def terse_examples(cls, role: str) -> tuple[tuple[str, str], ...]:
        """`examples(role)` with each reply cut to its last "Answer: ..." line when it has one: small models copy
        their examples' format, so a compact protocol shows its format as well as asking for it."""
        return tuple((user, answer_line(reply) or reply) for user, reply in cls.examples(role))

    @classmethod
    def tools(cls, role: str) -> tuple[Tool, ...]:
        """The tools `role` gets when code may run (each runs generated code in the sandbox)."""
        return ()

    @classmethod
    def instruction(cls, role: str, prompt: str, tools: Sequence[Tool]) -> str:
        """`role`'s instruction, given the tools it has."""
        return prompt


def answer_line(reply: str) -> str | None:
    """The last line of `reply` that starts with "Answer:", or None."""
    lines = [line.strip() for line in reply.splitlines() if line.strip().lower().startswith("answer:")]
    return lines[-1] if lines else None


def check_design_sizes(benchmark: str, train, val, train_size: int, val_size: int) -> None:
    if len(train) < train_size or len(val) < val_size:
        raise ValueError(
            f"{benchmark} has {len(train)} training and {len(val)} validation samples for the sizes asked "
            f"({train_size}, {val_size}); ask for fewer"
        )


def team_agents(
    benchmark: type[Benchmark],
    count: int,
    model: str,
    max_new_tokens: int,
    code_execution: bool = False,
    solo: bool = False,
) -> list[Agent]:
    """`count` agents taking the benchmark's roles in order (cycling)."""
    agents = []
    for i in range(count):
        role, prompt = benchmark.ROLES[i % len(benchmark.ROLES)]
        tools = benchmark.tools(role) if code_execution else ()
        system = f"You are the {role}. {benchmark.instruction(role, prompt, tools)}"
        examples = benchmark.examples(SOLO if solo else role)
        settings = {"model": model, "max_new_tokens": max_new_tokens, "examples": examples, "tools": tools}
        agents.append(Agent(benchmark.agent_name(i, role), role, system_prompt=system, **settings))
    return agents


def team_for(
    benchmark: type[Benchmark],
    model: str,
    topology: str = "chain",
    agents: int = 3,
    rounds: int = 1,
    decision: str = DECISION_METHOD,
    max_new_tokens: int = 256,
    seed: int | None = None,
    code_execution: bool = False,
    channel: str = "text",
    temporal: str | None = None,
    channels: dict | None = None,
) -> Team:
    """The default team for a benchmark. `topology="single"` is one agent answering alone (the baseline);
    `code_execution` attaches the roles' tools, which run generated code in the sandbox; `channel` is set on
    every edge and on the decision maker's reading; `temporal` as `CommGraph.preset` (unset: it follows `rounds`);
    `channels`: settings by channel name (each channel's settings class fields)."""
    if topology == SINGLE:
        members = team_agents(benchmark, 1, model, max_new_tokens, code_execution, solo=True)
        return Team(members, CommGraph([members[0].name]), rounds=1, decision=LAST, seed=seed)
    members = team_agents(benchmark, agents, model, max_new_tokens, code_execution)
    graph = CommGraph.preset(topology, [m.name for m in members], temporal=temporal, rounds=rounds, channel=channel)
    rule: str | Decision = decision
    if decision == DECISION_METHOD:
        maker = Agent(
            DECISION_NAME,
            DECISION_MAKER,
            f"You are the decision maker. {benchmark.DECISION_PROMPT}",
            model=model,
            max_new_tokens=max_new_tokens,
            examples=benchmark.examples(DECISION_MAKER),
            tools=benchmark.tools(DECISION_MAKER) if code_execution else (),
        )
        rule = Decision(DECISION_METHOD, maker, channel)
    return Team(members, graph, rounds=rounds, decision=rule, seed=seed, channels=channels)
