"""What a run is made of: the team's resolved plan (`RunPlan`) and each task's way through it (`TaskRun`).

`Team` checks everything once and hands the scheduler a `RunPlan`: its agents, rounds, decision, token budget,
seed and channel objects. Each task then walks its stages (`stages_of`): for every round, the spatial DAG's
levels of its own graph, then the decision step. `TaskRun` holds what the task has so far: replies, usage,
the tokens it spent and reserved, the caches its channels kept for later turns (`store`), and its messages in
schedule order (round, level, the team's agent order), not completion order, so transcripts and the `last`
decision do not depend on which reply happened to be shorter.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from langchain_core.messages import AIMessage

from kvmesh.agents.agent import Agent
from kvmesh.agents.decision import DECISION_ROUND, MAJORITY, Decision, majority_reply
from kvmesh.agents.result import TeamResult
from kvmesh.agents.task import Task
from kvmesh.agents.usage import UsageReport
from kvmesh.graph.graph import CommGraph
from kvmesh.kvcomm.channel import Cached, Channel

Round = int | str  # an int for agent rounds, DECISION_ROUND for the decision step


@dataclass(frozen=True)
class RunPlan:
    """A team, checked and resolved, as the scheduler runs it.

    Args:
        agents: the team's agents, in team order (list-style shards follow it).
        rounds: how many times the graph runs.
        decision: how the answer is chosen (and the decision maker, if any).
        token_budget: per-task cap on prompt + completion tokens, or None.
        seed: seeds sampling.
        channels: the team's channel objects by name (their state lives as long as the team).
    """

    agents: tuple[Agent, ...]
    rounds: int
    decision: Decision
    token_budget: int | None
    seed: int | None
    channels: Mapping[str, Channel]

    def position(self, agent: str) -> int:
        """The agent's place in team order (-1 for the decision maker)."""
        names = [a.name for a in self.agents]
        return names.index(agent) if agent in names else -1


@dataclass(frozen=True)
class Stage:
    round: Round
    agents: list[Agent]


def stages_of(plan: RunPlan, graph: CommGraph) -> list[Stage]:
    """Every round's levels of `graph` (agents that only read earlier levels), then the decision step."""
    by_name = {agent.name: agent for agent in plan.agents}
    levels = [[by_name[name] for name in level] for level in graph.levels()]
    stages = [Stage(r, level) for r in range(plan.rounds) for level in levels]
    if plan.decision.maker:
        stages.append(Stage(DECISION_ROUND, [plan.decision.agent]))
    return stages


@dataclass
class TaskRun:
    index: int
    task: Task
    graph: CommGraph  # this task's graph: the team's, or one a designer chose for it
    stages: list[Stage]
    usage: UsageReport = field(default_factory=UsageReport)
    replies: dict[tuple[str, Round], str] = field(default_factory=dict)
    spent: int = 0  # tokens used by finished calls
    reserved: int = 0  # tokens promised to calls planned in the current stage
    stop_reason: str = "completed"
    skipped: list[tuple[str, Round]] = field(default_factory=list)
    stage: int = -1  # index into `stages`
    outstanding: int = 0  # turns of the current stage still running
    deferred: list[Agent] = field(default_factory=list)  # turns waiting for reservations to settle
    records: list[tuple[tuple[int, int], AIMessage]] = field(default_factory=list)  # (schedule order, reply)
    store: dict[Hashable, Cached] = field(default_factory=dict)  # caches later turns read, until the end
    finished: bool = False

    @property
    def stopped(self) -> bool:
        return self.stop_reason != "completed"

    def last_round(self, agent: str) -> int | None:
        rounds = [r for (a, r) in self.replies if a == agent and r != DECISION_ROUND]
        return max(rounds) if rounds else None

    def last_reply(self, agent: str) -> str | None:
        last = self.last_round(agent)
        return None if last is None else self.replies[(agent, last)]

    def messages(self) -> list[AIMessage]:
        return [message for _, message in sorted(self.records, key=lambda record: record[0])]

    def answer(self, decision: Decision) -> str | None:
        if decision.maker:
            reply = self.replies.get((decision.agent.name, DECISION_ROUND))
            if reply is not None:
                return reply
        elif decision.method == MAJORITY:
            replies = [(a, self.last_reply(a)) for a in self.graph.agents]
            winner = majority_reply([(a, t) for a, t in replies if t is not None], self.task.extract_answer)
            if winner is not None:
                return winner
        # LAST, or the fallback when a budget stopped the decision: the latest reply in schedule order.
        agent_turns = [m for m in self.messages() if m.response_metadata["round"] != DECISION_ROUND]
        return agent_turns[-1].content if agent_turns else None

    def result(self, decision: Decision, elapsed: float) -> TeamResult:
        self.usage.wall_time_s = elapsed
        return TeamResult(
            task=self.task,
            answer=self.answer(decision),
            messages=self.messages(),
            usage=self.usage,
            graph=self.graph,
            stop_reason=self.stop_reason,
            skipped=self.skipped,
        )


def task_runs(plan: RunPlan, tasks: Sequence[Task], graphs: Sequence[CommGraph]) -> list[TaskRun]:
    """One `TaskRun` per task; tasks that share a graph share its stages."""
    stages: dict[int, list[Stage]] = {}
    runs = []
    for index, (task, graph) in enumerate(zip(tasks, graphs, strict=True)):
        if id(graph) not in stages:
            stages[id(graph)] = stages_of(plan, graph)
        runs.append(TaskRun(index, task, graph, stages[id(graph)]))
    return runs
