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

Token budget: a task never spends more than `team.token_budget` tokens (prompt + completion). Each running
turn reserves its prompt and output cap; a turn that would fit only once those reservations settle waits for
them, and its cap is clamped to what is left only when nothing else is pending. The task stops scheduling when
the tokens actually spent leave no room for the next prompt; its answer then falls back to the last reply.

Tools (`kvmesh.agents.tools`): a tool may answer a turn when it is scheduled; that turn makes no model call,
costs no tokens, and finishes at once. A tool may also rewrite a model reply before anyone reads it.

kv-reuse (`kvmesh.agents.reuse_channel`): on teams with kv-reuse edges, turns are planned in pieces; a turn
with cached pieces gets its prompt cache assembled by the model's reuse engine and joins the batch with it as
its prefix (its usage reports those tokens as `cache_read`, and the assembly time in its time to first token).
Finished turns leave their reply cache, and the first one the task's cache, for the turns that read them.

Messages are kept in schedule order (round, level, the team's agent order), not completion order, so
transcripts and the `last` decision do not depend on which reply happened to be shorter.

Per-task graphs: each task runs on its own `CommGraph` (`Team.graphs_for`: the team's graph, or one a topology
designer chose for that task; or `graphs=` given to `execute`). A graph may leave agents out: a pruned agent
has no turn at all, so it makes no model call and the decision maker does not read it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from langchain_core.messages import AIMessage

from kvmesh.agents.decision import majority_reply
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
from kvmesh.agents.reuse_channel import KV_REUSE, plan_pieces
from kvmesh.agents.task import Task
from kvmesh.agents.tools import ToolTurn
from kvmesh.agents.usage import Usage, UsageReport, edge_key
from kvmesh.kvcomm import Assembly, UnsupportedModelError
from kvmesh.llm import GenerationRequest
from kvmesh.llm.generation import DecodeBatch, Generation

if TYPE_CHECKING:
    from kvmesh.agents.agent import Agent
    from kvmesh.agents.graph import CommGraph
    from kvmesh.agents.team import Team

Round = int | str  # an int for agent rounds, "decision" for the decision step


@dataclass(frozen=True)
class _Stage:
    round: Round
    agents: list[Agent]


@dataclass
class _TaskState:
    index: int
    task: Task
    graph: CommGraph  # this task's graph: the team's, or one a designer chose for it
    stages: list[_Stage]
    usage: UsageReport = field(default_factory=UsageReport)
    replies: dict[tuple[str, Round], str] = field(default_factory=dict)
    spent: int = 0  # tokens used by finished calls
    reserved: int = 0  # tokens promised to calls planned in the current level
    stop_reason: str = "completed"
    skipped: list[tuple[str, Round]] = field(default_factory=list)
    stage: int = -1  # index into `stages`
    outstanding: int = 0  # turns of the current stage still generating
    deferred: list[Agent] = field(default_factory=list)  # turns waiting for reservations to settle
    records: list[tuple[tuple[int, int], AIMessage]] = field(default_factory=list)  # (schedule order, reply)
    kv: dict = field(default_factory=dict)  # kv-reuse: "task" and (agent, round) -> KVSegment, until the end

    @property
    def stopped(self) -> bool:
        return self.stop_reason != "completed"

    def last_round(self, agent: str) -> int | None:
        rounds = [r for (a, r) in self.replies if a == agent and r != "decision"]
        return max(rounds) if rounds else None

    def last_reply(self, agent: str) -> str | None:
        last = self.last_round(agent)
        return None if last is None else self.replies[(agent, last)]


@dataclass
class _Turn:
    state: _TaskState
    agent: Agent
    round: Round
    plan: PromptPlan
    max_new_tokens: int
    order: tuple[int, int]  # (stage index, position in the stage): the schedule order of the reply
    assembly: Assembly | None = None  # kv-reuse: the prompt's cache up to its tail
    keep_prompt_kv: bool = False  # kv-reuse: the prompt's cache teaches anchors or serves the task
    keep_reply_kv: bool = False  # kv-reuse: someone reads this reply's cache

    @property
    def reservation(self) -> int:
        return len(self.plan.token_ids) + self.max_new_tokens

    def request(self) -> GenerationRequest:
        stop = self.agent.stop + self.agent.llm.chat.stop
        return GenerationRequest(
            self.plan.token_ids,
            self.max_new_tokens,
            self.agent.temperature,
            stop,
            prefix=self.assembly,
            keep_kv=self.keep_prompt_kv or self.keep_reply_kv,
            keep_prompt_kv=self.keep_prompt_kv,
        )


def _stages(team: Team, graph: CommGraph) -> list[_Stage]:
    by_name = {agent.name: agent for agent in team.agents}
    levels = [[by_name[name] for name in level] for level in graph.levels()]
    stages = [_Stage(r, level) for r in range(team.rounds) for level in levels]
    if team.decision.method == "decision":
        stages.append(_Stage("decision", [team.decision.agent]))
    return stages


def _inbound(team: Team, state: _TaskState, agent: str, round_: Round) -> list[Inbound]:
    """Messages this agent reads: spatial predecessors this round, temporal predecessors last round."""
    graph = state.graph
    if round_ == "decision":
        channel = team.decision.channel
        last = [(a, state.last_round(a)) for a in graph.agents]
        kv = state.kv if channel == KV_REUSE and team.reuse.config.replies else {}
        return [
            Inbound(a, "decision", channel, state.replies[(a, r)], kv.get((a, r))) for a, r in last if r is not None
        ]
    found = []
    sources = [(SPATIAL, round_, graph.predecessors(agent, SPATIAL))]
    if round_ > 0:
        sources.append((TEMPORAL, round_ - 1, graph.predecessors(agent, TEMPORAL)))
    for kind, source_round, predecessors in sources:
        for source in predecessors:
            text = state.replies.get((source, source_round))
            if text is not None:
                channel = graph.channel(source, agent, kind)
                reads_kv = channel == KV_REUSE and team.reuse.config.replies
                kv = state.kv.get((source, source_round)) if reads_kv else None
                found.append(Inbound(source, kind, channel, text, kv))
    return found


def _speaks_kv(team: Team, graph: CommGraph, agent: str, round_: Round) -> bool:
    """Whether a later turn reads this turn's reply over kv-reuse."""
    if round_ == "decision" or not team.reuse.config.replies:
        return False
    if team.decision.channel == KV_REUSE and team.decision.method == "decision":
        return True
    return any(e.source == agent and e.channel == KV_REUSE for e in graph.edges())


def _plan_turn(team: Team, state: _TaskState, agent: Agent, round_: Round, inbound: list[Inbound]) -> PromptPlan:
    task = state.task
    is_decision = round_ == "decision"
    position = -1 if is_decision else team.agent_names.index(agent.name)
    fields = {
        "system": agent.system_text(),
        "question": task.question,
        "context": task.context,
        "shard": None if is_decision else task.shard_for(agent.name, position),
        "inbound": inbound,
        "instruction": DECISION_INSTRUCTION if is_decision else None,
        "examples": agent.examples,
    }
    if team.uses_kv_reuse:
        return plan_pieces(agent.llm, **fields, task_kv=state.kv.get("task"))
    return plan_prompt(agent.llm, **fields)


def _tool_reply(state: _TaskState, agent: Agent, round_: Round, inbound: list[Inbound]) -> tuple[str, str] | None:
    """(tool name, reply) from the first of the agent's tools that answers this turn, else None."""
    turn = ToolTurn(state.task, agent.name, round_, inbound)
    for tool in agent.tools:
        reply = tool.before(turn)
        if reply is not None:
            return tool.name, reply
    return None


_DEFER = object()  # a turn that must wait for this stage's reservations to settle


def _schedule(team: Team, state: _TaskState, agent: Agent, round_: Round, order: tuple[int, int]):
    """Plan one turn; yield its MessageSent/AgentStarted events and the turn, `_DEFER`, or BudgetExhausted."""
    if state.stopped:
        state.skipped.append((agent.name, round_))
        return
    inbound = _inbound(team, state, agent.name, round_)
    answered = _tool_reply(state, agent, round_, inbound) if agent.tools else None
    if answered is not None:
        yield _record_tool_turn(state, agent, round_, order, *answered)
        return
    plan = _plan_turn(team, state, agent, round_, inbound)
    max_new = agent.max_new_tokens
    if team.token_budget is not None:
        room = team.token_budget - state.spent - len(plan.token_ids)  # what is really left for this turn
        if room < 1:
            state.stop_reason = "budget"
            state.skipped.append((agent.name, round_))
            yield BudgetExhausted(state.index, team.token_budget, state.spent, agent.name, round_)
            return
        if state.reserved and room - state.reserved < max_new:
            yield _DEFER
            return
        max_new = min(max_new, room - state.reserved)
    turn = _Turn(state, agent, round_, plan, max_new, order)
    if plan.pieces is not None:
        turn.assembly = team.reuse.assemble(agent.llm, (agent.name, round_), plan)
        turn.keep_prompt_kv = turn.assembly is None and (plan.reusable or "task" not in state.kv)
        turn.keep_reply_kv = _speaks_kv(team, state.graph, agent.name, round_)
    state.reserved += turn.reservation if team.token_budget is not None else 0
    for message, tokens in zip(plan.inbound, plan.edge_tokens, strict=True):
        edge_round = round_ if message.kind != TEMPORAL else round_ - 1
        yield MessageSent(state.index, message.source, agent.name, edge_round, message.kind, message.channel, tokens)
    yield AgentStarted(state.index, agent.name, round_, plan.text)
    yield turn


def _record_tool_turn(
    state: _TaskState, agent: Agent, round_: Round, order: tuple[int, int], tool: str, reply: str
) -> AgentFinished:
    """A turn a tool answered: no model call and no tokens, but a message like any other."""
    usage = Usage()
    message = AIMessage(
        content=reply.strip(),
        name=agent.name,
        usage_metadata=usage.to_metadata(),
        response_metadata={"round": round_, "tool": tool, "model_call": False},
    )
    state.records.append((order, message))
    state.replies[(agent.name, round_)] = message.content
    state.usage.add_call(agent.name, str(round_), usage)
    return AgentFinished(state.index, agent.name, round_, message, usage)


def _keep_caches(team: Team, turn: _Turn, gen: Generation) -> None:
    """kv-reuse: keep what later turns read (the task's cache, this reply's) and teach the engine."""
    state, name = turn.state, turn.agent.name
    if gen.prompt_kv is not None:
        if "task" not in state.kv:
            state.kv["task"] = gen.prompt_kv.slice(*turn.plan.task_span).detached()
        if turn.assembly is None and turn.plan.reusable:
            team.reuse.learn(turn.agent.llm, (name, turn.round), turn.plan, gen.prompt_kv)
    if gen.reply_kv is not None and turn.keep_reply_kv:
        state.kv[(name, turn.round)] = gen.reply_kv


def _record(team: Team, turn: _Turn, gen: Generation, started: float) -> AgentFinished:
    state, name = turn.state, turn.agent.name
    prepared = turn.assembly.seconds if turn.assembly is not None else 0.0  # cache assembly is part of the call
    reused = turn.assembly.reused_tokens if turn.assembly is not None else 0
    usage = Usage(gen.prompt_tokens, gen.completion_tokens, reused, 1, gen.latency_s + prepared, gen.ttft_s + prepared)
    if turn.plan.pieces is not None:
        _keep_caches(team, turn, gen)
    reply, edited_by = gen.text.strip(), []
    if turn.agent.tools:
        tool_turn = ToolTurn(state.task, name, turn.round, turn.plan.inbound)
        for tool in turn.agent.tools:
            edited = tool.after(tool_turn, reply)
            if edited != reply:
                reply, edited_by = edited, [*edited_by, tool.name]
    message = AIMessage(
        content=reply.strip(),
        name=name,
        usage_metadata=usage.to_metadata(),
        response_metadata={
            "round": turn.round,
            "prompt": turn.plan.text,
            "model": turn.agent.llm.spec,
            "finish_reason": gen.finish_reason,
            "ttft_s": usage.ttft_s,
            "latency_s": usage.wall_time_s,
            **({"edited_by": edited_by} if edited_by else {}),
            **({"kv_reuse": "reused" if turn.assembly else "dense"} if turn.plan.reusable else {}),
        },
    )
    state.records.append((turn.order, message))
    state.replies[(name, turn.round)] = message.content
    state.spent += usage.total_tokens
    state.reserved = max(0, state.reserved - turn.reservation) if state.reserved else 0
    state.usage.add_call(name, str(turn.round), usage)
    cached = turn.plan.edge_cached if turn.assembly is not None else None
    for i, (inbound, tokens) in enumerate(zip(turn.plan.inbound, turn.plan.edge_tokens, strict=True)):
        state.usage.add_edge(edge_key(inbound.source, name, inbound.kind), tokens, cached[i] if cached else 0)
    first_token = gen.started_at - started + gen.ttft_s  # assembly ran before started_at, inside the run
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


def _schedule_turns(
    team: Team, state: _TaskState, stage_index: int, agents: list[Agent], stage: _Stage, batches: _Batches
) -> Iterator[Event]:
    for agent in agents:
        order = (stage_index, stage.agents.index(agent))
        for item in _schedule(team, state, agent, stage.round, order):
            if item is _DEFER:
                state.deferred.append(agent)
            elif isinstance(item, _Turn):
                batches.submit(item)
                state.outstanding += 1
            else:
                yield item


def _advance(team: Team, state: _TaskState, batches: _Batches, started: float):
    """Move a task whose current turns are done on: deferred turns first, then the next stage with work."""
    stages = state.stages
    while state.outstanding == 0:
        if state.deferred:  # reservations have settled: plan the waiting turns again
            waiting, state.deferred = state.deferred, []
            yield from _schedule_turns(team, state, state.stage, waiting, stages[state.stage], batches)
            continue
        if state.stage >= 0:
            current = stages[state.stage]
            following = stages[state.stage + 1] if state.stage + 1 < len(stages) else None
            if current.round != "decision" and (following is None or following.round != current.round):
                yield RoundFinished(state.index, current.round, state.usage.per_round.get(str(current.round), Usage()))
        state.stage += 1
        if state.stage == len(stages):
            state.kv.clear()  # nobody reads this task's caches any more
            yield TeamFinished(state.index, _result(team, state, time.perf_counter() - started))
            return
        stage = stages[state.stage]
        state.reserved = 0
        yield from _schedule_turns(team, state, state.stage, stage.agents, stage, batches)


def _answer(team: Team, state: _TaskState) -> str | None:
    method = team.decision.method
    if method == "decision":
        reply = state.replies.get((team.decision.agent.name, "decision"))
        if reply is not None:
            return reply
    elif method == "majority":
        replies = [(a, state.last_reply(a)) for a in state.graph.agents]
        winner = majority_reply([(a, t) for a, t in replies if t is not None], state.task.extract_answer)
        if winner is not None:
            return winner
    # "last", or the fallback when a budget stopped the decision: the latest reply in schedule order.
    agent_turns = [m for m in _messages(state) if m.response_metadata["round"] != "decision"]
    return agent_turns[-1].content if agent_turns else None


def _messages(state: _TaskState) -> list[AIMessage]:
    return [message for _, message in sorted(state.records, key=lambda record: record[0])]


def _result(team: Team, state: _TaskState, elapsed: float) -> TeamResult:
    state.usage.wall_time_s = elapsed
    return TeamResult(
        task=state.task,
        answer=_answer(team, state),
        messages=_messages(state),
        usage=state.usage,
        graph=state.graph,
        stop_reason=state.stop_reason,
        skipped=state.skipped,
    )


def _check_reuse_models(team: Team) -> None:
    """Build each model's reuse engine up front, so an unsupported model fails before any call."""
    agents = [*team.agents, *([team.decision.agent] if team.decision.agent is not None else [])]
    for agent in agents:
        try:
            team.reuse.engine(agent.llm)
        except UnsupportedModelError as error:
            raise UnsupportedModelError(
                f"agent {agent.name!r} cannot take part in kv-reuse: {error}. Use channel='text' edges for it."
            ) from error


def execute(team: Team, tasks: Sequence[Task], graphs: Sequence[CommGraph] | None = None) -> Iterator[Event]:
    """Run `team` on `tasks` together, yielding events; each task ends with its TeamFinished.

    `graphs`: one graph per task (checked by `Team.check_graph`); default `team.graphs_for(tasks)`.
    """
    started = time.perf_counter()
    if graphs is None:
        graphs = team.graphs_for(tasks)
    elif len(graphs) != len(tasks):
        raise ValueError(f"got {len(graphs)} graphs for {len(tasks)} tasks; give one graph per task")
    if team.uses_kv_reuse:
        _check_reuse_models(team)
    stages: dict[int, list[_Stage]] = {}  # by graph identity: tasks sharing a graph share its stages
    states = []
    for i, (task, graph) in enumerate(zip(tasks, graphs, strict=True)):
        if id(graph) not in stages:
            team.check_graph(graph)
            stages[id(graph)] = _stages(team, graph)
        states.append(_TaskState(i, task, graph, stages[id(graph)]))
    batches = _Batches(team.seed)
    for state in states:
        yield from _advance(team, state, batches, started)
    while running := batches.busy():
        for batch in running:
            for turn, generation in batch.step():
                yield _record(team, turn, generation, started)
                turn.state.outstanding -= 1
                yield from _advance(team, turn.state, batches, started)
