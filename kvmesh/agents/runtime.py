"""The scheduler: runs a team on a batch of tasks and yields events as it goes.

Each task walks the same stages: for every round, the spatial DAG's levels (agents that only read earlier
levels), then the decision step. A stage's turns (exact prompt, edge token counts, budget check) go into one
running batch per model, shared by every agent and every task:

    start: submit every task's first stage             -> one batched prefill
    loop:  step each model's batch                      -> one decode forward pass, all rows of all tasks
           a turn finishes -> record reply, usage, events
           a task's stage is done -> submit its next stage (the rows join the running batch)

So tasks never wait for each other's slowest reply, while a task's own stages run in order and every prompt
is exactly what a level-by-level run would build. `Team.run`, `Team.stream` and `Team.run_batch` are thin
wrappers over `execute`, so all three share one path.

Token budget: a task never spends more than `team.token_budget` tokens (prompt + completion). A turn whose
prompt no longer fits is skipped, its output cap is clamped to what is left, and once a turn is skipped the
task stops scheduling; its answer then falls back to the last reply it has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from langchain_core.messages import AIMessage

from kvmesh.agents.decision import majority_vote
from kvmesh.agents.events import (
    AgentFinished,
    AgentStarted,
    BudgetExhausted,
    Event,
    MessageSent,
    RoundFinished,
    TeamFinished,
)
from kvmesh.agents.graph import SPATIAL, TEMPORAL
from kvmesh.agents.prompts import DECISION_INSTRUCTION, Inbound, PromptPlan, plan_prompt
from kvmesh.agents.result import TeamResult
from kvmesh.agents.task import Task
from kvmesh.agents.usage import Usage, UsageReport, edge_key
from kvmesh.llm import GenerationRequest
from kvmesh.llm.generation import DecodeBatch, Generation

if TYPE_CHECKING:
    from kvmesh.agents.agent import Agent
    from kvmesh.agents.team import Team

Round = int | str  # an int for agent rounds, "decision" for the decision step


@dataclass
class _TaskState:
    index: int
    task: Task
    usage: UsageReport = field(default_factory=UsageReport)
    messages: list[AIMessage] = field(default_factory=list)
    replies: dict[tuple[str, Round], str] = field(default_factory=dict)
    spent: int = 0  # tokens used by finished calls
    reserved: int = 0  # tokens promised to calls planned in the current level
    stop_reason: str = "completed"
    skipped: list[tuple[str, Round]] = field(default_factory=list)
    stage: int = -1  # index into the team's stages
    outstanding: int = 0  # turns of the current stage still generating

    @property
    def stopped(self) -> bool:
        return self.stop_reason != "completed"

    def last_reply(self, agent: str) -> str | None:
        rounds = [r for (a, r) in self.replies if a == agent and r != "decision"]
        return self.replies[(agent, max(rounds))] if rounds else None


@dataclass
class _Turn:
    state: _TaskState
    agent: Agent
    round: Round
    plan: PromptPlan
    max_new_tokens: int

    def request(self) -> GenerationRequest:
        stop = self.agent.stop + self.agent.llm.chat.stop
        return GenerationRequest(self.plan.token_ids, self.max_new_tokens, self.agent.temperature, stop)


@dataclass(frozen=True)
class _Stage:
    round: Round
    agents: list[Agent]


def _stages(team: Team) -> list[_Stage]:
    by_name = {agent.name: agent for agent in team.agents}
    levels = [[by_name[name] for name in level] for level in team.graph.levels()]
    stages = [_Stage(r, level) for r in range(team.rounds) for level in levels]
    if team.decision.method == "decision":
        stages.append(_Stage("decision", [team.decision.agent]))
    return stages


def _inbound(team: Team, state: _TaskState, agent: str, round_: Round) -> list[Inbound]:
    """Messages this agent reads: spatial predecessors this round, temporal predecessors last round."""
    if round_ == "decision":
        replies = [(a, state.last_reply(a)) for a in team.graph.agents]
        return [Inbound(a, "decision", "text", text) for a, text in replies if text is not None]
    found = []
    sources = [(SPATIAL, round_, team.graph.predecessors(agent, SPATIAL))]
    if round_ > 0:
        sources.append((TEMPORAL, round_ - 1, team.graph.predecessors(agent, TEMPORAL)))
    for kind, source_round, predecessors in sources:
        for source in predecessors:
            text = state.replies.get((source, source_round))
            if text is not None:
                found.append(Inbound(source, kind, team.graph.channel(source, agent, kind), text))
    return found


def _plan_turn(team: Team, state: _TaskState, agent: Agent, round_: Round) -> PromptPlan:
    task = state.task
    is_decision = round_ == "decision"
    position = -1 if is_decision else team.graph.agents.index(agent.name)
    return plan_prompt(
        agent.llm,
        system=agent.system_text(),
        question=task.question,
        context=task.context,
        shard=None if is_decision else task.shard_for(agent.name, position),
        inbound=_inbound(team, state, agent.name, round_),
        instruction=DECISION_INSTRUCTION if is_decision else None,
    )


def _schedule(team: Team, state: _TaskState, agent: Agent, round_: Round) -> Iterator[Event | _Turn]:
    """Plan one turn; yield its MessageSent/AgentStarted events and the turn, or BudgetExhausted."""
    if state.stopped:
        state.skipped.append((agent.name, round_))
        return
    plan = _plan_turn(team, state, agent, round_)
    max_new = agent.max_new_tokens
    if team.token_budget is not None:
        left = team.token_budget - state.spent - state.reserved - len(plan.token_ids)
        if left < 1:
            state.stop_reason = "budget"
            state.skipped.append((agent.name, round_))
            yield BudgetExhausted(state.index, team.token_budget, state.spent, agent.name, round_)
            return
        max_new = min(max_new, left)
        state.reserved += len(plan.token_ids) + max_new
    for message, tokens in zip(plan.inbound, plan.edge_tokens, strict=True):
        edge_round = round_ if message.kind != TEMPORAL else round_ - 1
        yield MessageSent(state.index, message.source, agent.name, edge_round, message.kind, message.channel, tokens)
    yield AgentStarted(state.index, agent.name, round_, plan.text)
    yield _Turn(state, agent, round_, plan, max_new)


def _record(turn: _Turn, gen: Generation, started: float) -> AgentFinished:
    state, name = turn.state, turn.agent.name
    usage = Usage(gen.prompt_tokens, gen.completion_tokens, 0, 1, gen.latency_s, gen.ttft_s)
    message = AIMessage(
        content=gen.text.strip(),
        name=name,
        usage_metadata=usage.to_metadata(),
        response_metadata={
            "round": turn.round,
            "prompt": turn.plan.text,
            "model": turn.agent.llm.spec,
            "finish_reason": gen.finish_reason,
            "ttft_s": gen.ttft_s,
            "latency_s": gen.latency_s,
        },
    )
    state.messages.append(message)
    state.replies[(name, turn.round)] = message.content
    state.spent += usage.total_tokens
    state.usage.add_call(name, str(turn.round), usage)
    for inbound, tokens in zip(turn.plan.inbound, turn.plan.edge_tokens, strict=True):
        state.usage.add_edge(edge_key(inbound.source, name, inbound.kind), tokens)
    first_token = gen.started_at - started + gen.ttft_s
    if state.usage.ttft_s is None or first_token < state.usage.ttft_s:
        state.usage.ttft_s = first_token
    return AgentFinished(state.index, name, turn.round, message, usage)


class _Batches:
    """One running `DecodeBatch` per model, created on first use."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.by_model: dict[int, DecodeBatch] = {}

    def submit(self, turn: _Turn) -> None:
        llm = turn.agent.llm
        if id(llm) not in self.by_model:
            self.by_model[id(llm)] = llm.new_batch(self.seed)
        self.by_model[id(llm)].submit(turn.request(), turn)

    def busy(self) -> list[DecodeBatch]:
        return [batch for batch in self.by_model.values() if batch.has_work]


def _advance(team: Team, state: _TaskState, stages: list[_Stage], batches: _Batches, started: float):
    """Move a task whose current stage is done to the next stage that has work; finish it after the last."""
    while state.outstanding == 0:
        if state.stage >= 0:
            current = stages[state.stage]
            following = stages[state.stage + 1] if state.stage + 1 < len(stages) else None
            if current.round != "decision" and (following is None or following.round != current.round):
                yield RoundFinished(state.index, current.round, state.usage.per_round.get(str(current.round), Usage()))
        state.stage += 1
        if state.stage == len(stages):
            yield TeamFinished(state.index, _result(team, state, time.perf_counter() - started))
            return
        stage = stages[state.stage]
        state.reserved = 0
        for agent in stage.agents:
            for item in _schedule(team, state, agent, stage.round):
                if isinstance(item, _Turn):
                    batches.submit(item)
                    state.outstanding += 1
                else:
                    yield item


def _answer(team: Team, state: _TaskState) -> str | None:
    method = team.decision.method
    if method == "decision":
        reply = state.replies.get((team.decision.agent.name, "decision"))
        if reply is not None:
            return reply
    elif method == "majority":
        replies = [(a, state.last_reply(a)) for a in team.graph.agents]
        vote = majority_vote([(a, t) for a, t in replies if t is not None], state.task.extract_answer)
        if vote is not None:
            return vote
    # "last", or the fallback when a budget stopped the decision: the latest reply in schedule order.
    agent_turns = [m for m in state.messages if m.response_metadata["round"] != "decision"]
    return agent_turns[-1].content if agent_turns else None


def _result(team: Team, state: _TaskState, elapsed: float) -> TeamResult:
    state.usage.wall_time_s = elapsed
    return TeamResult(
        task=state.task,
        answer=_answer(team, state),
        messages=state.messages,
        usage=state.usage,
        graph=team.graph,
        stop_reason=state.stop_reason,
        skipped=state.skipped,
    )


def execute(team: Team, tasks: Sequence[Task]) -> Iterator[Event]:
    """Run `team` on `tasks` together, yielding events; each task ends with its TeamFinished."""
    started = time.perf_counter()
    stages = _stages(team)
    states = [_TaskState(i, task) for i, task in enumerate(tasks)]
    batches = _Batches(team.seed)
    for state in states:
        yield from _advance(team, state, stages, batches, started)
    while running := batches.busy():
        for batch in running:
            for turn, generation in batch.step():
                yield _record(turn, generation, started)
                turn.state.outstanding -= 1
                yield from _advance(team, turn.state, stages, batches, started)
