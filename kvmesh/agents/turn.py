"""One agent turn: its prompt, the cache its channel prepares, its rows in the running batch, and its message.

    plan_turn   the messages the agent reads -> a tool's answer, or its prompt (each message laid out by its
                channel) -> the token budget -> a `Turn`; a turn with cached pieces gets a preparation from
                the channel that made them (`Channel.place`)
    Turn.rows   what to submit now: the preparation's prefill-only rows, then, once its cache is ready, the
                turn's own row, which keeps the caches the team's channels ask for (`Channel.keeps`)
    Turn.take   a finished row's result: sent back into the preparation, or the turn's own generation
    record      the reply -> the tools' `after` hooks -> an `AIMessage` with exact usage -> the channels learn
                (`Channel.learn`) -> `AgentFinished`

Tools (`kvmesh.agents.tools`): a tool may answer a turn when it is planned; that turn makes no model call, costs
no tokens, and finishes at once. A tool may also rewrite a model reply before anyone reads it.

Token budget: a task never spends more than the team's `token_budget` tokens (prompt + completion). Each
planned turn reserves its prompt and output cap; a turn that would fit only once those reservations settle
waits for them (`DEFER`), and its cap is clamped to what is left only when nothing else is pending. The task
stops planning when the tokens actually spent leave no room for the next prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from langchain_core.messages import AIMessage

from kvmesh.agents.agent import Agent
from kvmesh.agents.decision import DECISION_ROUND, LAST
from kvmesh.agents.events import (
    AgentFinished,
    AgentStarted,
    BudgetExhausted,
    ContextExceeded,
    Event,
    MessageSent,
)
from kvmesh.agents.prompts import DECISION_INSTRUCTION, Inbound, PromptPlan, plan_prompt
from kvmesh.agents.state import Round, RunPlan, TaskRun
from kvmesh.agents.task import Task
from kvmesh.agents.tools import ToolTurn
from kvmesh.agents.usage import Usage
from kvmesh.graph.edge import DECISION, SPATIAL, TEMPORAL, edge_key
from kvmesh.kvcomm.assembly import Assembly, Preparation
from kvmesh.kvcomm.channel import TurnView, metadata_key, plan_cache, reads_replies, reply_key, usable_task_cache
from kvmesh.llm.base import ContextLengthError, Generation, GenerationRequest, check_context, context_length_of

DEFER = object()  # planned again once the stage's reservations settle

log = logging.getLogger("kvmesh")


@dataclass(eq=False)
class Turn:
    run: TaskRun
    agent: Agent
    round: Round
    plan: PromptPlan
    max_new_tokens: int
    order: tuple[int, int]  # (stage index, position in the stage): the schedule order of the reply
    team: RunPlan
    cache_channel: str | None = None  # the channel preparing the prompt's cache, if any
    preparation: Preparation | None = None  # while it runs: yields the rows it needs, returns the assembly
    assembly: Assembly | None = None  # the prompt's cache up to its tail, placed from caches
    edge_kv_bytes: list[int] | None = None  # per inbound message: KV bytes its channel moved (None: none moved)
    started: bool = False  # whether the preparation has begun
    waiting: list[GenerationRequest] = field(default_factory=list)  # the preparation's rows out now
    results: dict[int, Generation] = field(default_factory=dict)  # their results so far, by id(request)
    submitted: bool = False  # whether the rows in `waiting` went to the batch
    own: GenerationRequest | None = None  # the turn's own row, once submitted

    @property
    def kv_bytes(self) -> list[int]:
        """Per inbound message: the bytes of KV cache its channel moved into this turn's cache."""
        return self.edge_kv_bytes or [0] * len(self.plan.inbound)

    @property
    def reservation(self) -> int:
        return len(self.plan.token_ids) + self.max_new_tokens

    def view(self, assembled: bool) -> TurnView:
        """The turn as its channels see it; `read_over`: the channels of the edges that read its reply."""
        read_over: set[str] = set()
        if self.round != DECISION_ROUND:
            read_over = {e.channel for e in self.run.graph.edges() if e.source == self.agent.name}
            if self.team.decision.maker:
                read_over.add(self.team.decision.channel)
        name, model, plan = self.agent.name, self.agent.llm, self.plan
        return TurnView(
            (name, self.round), model, plan.pieces, plan.task_span, assembled, frozenset(read_over), self.run.store
        )

    def _advance(self, results: list[Generation] | None) -> None:
        """Run the preparation on to its next rows, or to its end."""
        try:
            self.waiting = self.preparation.send(results)
            self.results, self.submitted = {}, False
        except StopIteration as done:
            self.preparation, self.assembly, self.waiting = None, done.value, []

    def rows(self) -> list[GenerationRequest]:
        """The rows to submit now: none while earlier ones are out."""
        if self.preparation is not None and not self.started:
            self.started = True
            self._advance(None)  # the preparation runs up to the first rows it needs
        if self.preparation is not None:
            if self.submitted:
                return []
            self.submitted = True
            return self.waiting
        if self.own is not None:
            return []
        view = self.view(self.assembly is not None)
        keeps = [channel.keeps(view) for channel in self.team.channels.values()]
        keep_prompt, keep_reply = any(k.prompt for k in keeps), any(k.reply for k in keeps)
        self.own = GenerationRequest(
            self.plan.token_ids,
            0 if self._silent(view) else self.max_new_tokens,
            self.agent.temperature,
            self.agent.stop + self.agent.llm.chat.stop,
            prefix=self.assembly,
            keep_kv=keep_prompt or keep_reply,
            keep_prompt_kv=keep_prompt,
            adapter=self.agent.adapter,
            latent_steps=max(k.thoughts for k in keeps) if keeps else 0,
        )
        return [self.own]

    def _silent(self, view: TurnView) -> bool:
        """Whether nobody reads this turn's reply, only its prompt's cache (every edge out of it is on a channel
        that does not read replies): its row then prefills and generates nothing. The last speaker's reply is
        the answer under `last`, and every reply is a vote under `majority`: those speak."""
        if self.round == DECISION_ROUND or not view.read_over:
            return False
        if reads_replies(self.team.channels, view.read_over):
            return False
        decision = self.team.decision
        speaks_before_others = any(e.source == self.agent.name for e in self.run.graph.edges(SPATIAL))
        return decision.maker or (decision.method == LAST and speaks_before_others)

    def take(self, request: GenerationRequest, generation: Generation) -> Generation | None:
        """A finished row's result; returns the generation when it was the turn's own row."""
        if request is self.own:
            return generation
        self.results[id(request)] = generation
        if len(self.results) == len(self.waiting):
            self._advance([self.results[id(r)] for r in self.waiting])
        return None


def _inbound(team: RunPlan, run: TaskRun, agent: str, round_: Round) -> list[Inbound]:
    """Messages this agent reads: spatial predecessors this round, temporal predecessors last round, or (the
    decision) every agent's last reply; each with its sender's cache when its channel kept one."""

    def message(source: str, kind: str, channel: str, source_round: Round) -> Inbound:
        cached = run.store.get(reply_key(source, source_round, channel)) or run.store.get(
            reply_key(source, source_round)
        )
        kv = cached.segment if cached is not None and cached.channel == channel else None
        return Inbound(source, kind, channel, run.replies[(source, source_round)], kv)

    graph = run.graph
    if round_ == DECISION_ROUND:
        last = [(a, run.last_round(a)) for a in graph.agents]
        return [message(a, DECISION, team.decision.channel, r) for a, r in last if r is not None]
    sources = [(SPATIAL, round_, graph.predecessors(agent, SPATIAL))]
    if round_ > 0:
        sources.append((TEMPORAL, round_ - 1, graph.predecessors(agent, TEMPORAL)))
    return [
        message(source, kind, graph.channel(source, agent, kind), source_round)
        for kind, source_round, predecessors in sources
        for source in predecessors
        if (source, source_round) in run.replies
    ]


def _tool_reply(run: TaskRun, agent: Agent, round_: Round, inbound: list[Inbound]) -> tuple[str, str] | None:
    """(tool name, reply) from the first of the agent's tools that answers this turn, else None."""
    turn = ToolTurn(run.task, agent.name, round_, inbound)
    for tool in agent.tools:
        reply = tool.before(turn)
        if reply is not None:
            return tool.name, reply
    return None


def _who(agent: Agent, round_: Round | None, task: Task) -> str:
    where = [] if round_ is None else [f"round {round_}" if round_ != DECISION_ROUND else "the decision"]
    where += [f"task {task.id}"] if task.id is not None else []
    return f"agent {agent.name!r}" + (f" ({', '.join(where)})" if where else "")


def check_task_fits(task: Task, agents: Sequence[Agent], position: Callable[[str], int | None]) -> None:
    """Refuse, before any model call, a task whose own text (question, context, an agent's shard) leaves an
    agent's model no room: a lower bound of every prompt the agent would read for it. `position`: an agent's
    place in team order, None for one that reads no shard (the decision maker)."""
    for agent in agents:
        limit = context_length_of(agent.llm)
        if limit is None:
            continue
        place = position(agent.name)
        shard = task.shard_for(agent.name, place) if place is not None else None
        parts = [task.question, task.context or "", shard or ""]
        tokens = sum(agent.llm.count_tokens(part) for part in parts if part)
        who = f"the task's own text for {_who(agent, None, task)}"
        check_context(tokens, limit, who, fixes="shorten the task's question, context or shards")


def plan_turn(team: RunPlan, run: TaskRun, agent: Agent, round_: Round, order: tuple[int, int]):
    """Plan one turn; yield its MessageSent/AgentStarted events and the `Turn`, or `DEFER`, or BudgetExhausted or
    ContextExceeded
    (a turn a tool answers yields its AgentFinished at once)."""
    if run.stopped:
        run.skipped.append((agent.name, round_))
        return
    inbound = _inbound(team, run, agent.name, round_)
    answered = _tool_reply(run, agent, round_, inbound) if agent.tools else None
    if answered is not None:
        yield record_tool_turn(run, agent, round_, order, *answered)
        return
    task, deciding = run.task, round_ == DECISION_ROUND
    plan = plan_prompt(
        agent.llm,
        agent.system_text(),
        task.question,
        context=task.context,
        shard=None if deciding else task.shard_for(agent.name, team.position(agent.name)),
        inbound=inbound,
        instruction=DECISION_INSTRUCTION if deciding else None,
        examples=agent.examples,
        channels=team.channels,
        task_cache=usable_task_cache(run.store, agent.llm, {m.channel for m in inbound if m.kv is not None}),
    )
    try:
        check_context(len(plan.token_ids), context_length_of(agent.llm), f"the prompt of {_who(agent, round_, task)}")
    except ContextLengthError as error:  # grown from replies: stop this task as a spent budget would, not the batch
        log.warning("%s; the task stops here", error)
        run.stop_reason = "context"
        run.skipped.append((agent.name, round_))
        yield ContextExceeded(run.index, agent.name, round_, str(error))
        return
    max_new = agent.max_new_tokens
    if team.token_budget is not None:
        room = team.token_budget - run.spent - len(plan.token_ids)  # what is really left for this turn
        if room < 1:
            run.stop_reason = "budget"
            run.skipped.append((agent.name, round_))
            yield BudgetExhausted(run.index, team.token_budget, run.spent, agent.name, round_)
            return
        if run.reserved and room - run.reserved < max_new:
            yield DEFER
            return
        max_new = min(max_new, room - run.reserved)
    turn = Turn(run, agent, round_, plan, max_new, order, team)
    cache = plan_cache(team.channels, agent.llm, (agent.name, round_), plan.pieces, plan.edge_pieces)
    turn.cache_channel, turn.preparation, turn.edge_kv_bytes = cache.channel, cache.preparation, cache.kv_bytes
    run.reserved += turn.reservation if team.token_budget is not None else 0
    for message, tokens, kv_bytes in zip(plan.inbound, plan.edge_tokens, turn.kv_bytes, strict=True):
        edge_round = round_ if message.kind != TEMPORAL else round_ - 1
        yield MessageSent(
            run.index, message.source, agent.name, edge_round, message.kind, message.channel, tokens, kv_bytes
        )
    yield AgentStarted(run.index, agent.name, round_, plan.text)
    yield turn


def record_tool_turn(
    run: TaskRun, agent: Agent, round_: Round, order: tuple[int, int], tool: str, reply: str
) -> AgentFinished:
    """A turn a tool answered: no model call and no tokens, but a message like any other."""
    usage = Usage()
    message = AIMessage(
        content=reply.strip(),
        name=agent.name,
        usage_metadata=usage.to_metadata(),
        response_metadata={"round": round_, "tool": tool, "model_call": False},
    )
    run.records.append((order, message))
    run.replies[(agent.name, round_)] = message.content
    run.usage.add_call(agent.name, str(round_), usage)
    return AgentFinished(run.index, agent.name, round_, message, usage)


def record(turn: Turn, gen: Generation, started: float) -> Event:
    """The turn's message, usage and events once its own row finished; the channels learn from it."""
    run, name, assembly = turn.run, turn.agent.name, turn.assembly
    prepared = assembly.seconds if assembly is not None else 0.0  # cache assembly is part of the call
    reused = assembly.reused_tokens if assembly is not None else 0
    timing = (gen.latency_s + prepared, gen.ttft_s + prepared)
    cached = None if gen.cached_tokens is None else reused + gen.cached_tokens  # a server's own cache counts too
    usage = Usage(gen.prompt_tokens, gen.completion_tokens, cached, 1, *timing, sum(turn.kv_bytes), gen.latent_steps)
    view = turn.view(assembly is not None)
    for channel in turn.team.channels.values():
        channel.learn(view, gen)
    reply, edited_by = gen.text.strip(), []
    if turn.agent.tools:
        tool_turn = ToolTurn(run.task, name, turn.round, turn.plan.inbound)
        for tool in turn.agent.tools:
            edited = tool.after(tool_turn, reply)
            if edited != reply:
                reply, edited_by = edited, [*edited_by, tool.name]
    served: dict[str, str] = {}
    if turn.cache_channel is not None:  # how the channel served the turn: from caches, or dense
        served[metadata_key(turn.cache_channel)] = "reused" if assembly is not None else "dense"
    message = AIMessage(
        content=reply.strip(),
        name=name,
        usage_metadata=usage.to_metadata(),
        response_metadata={
            "round": turn.round,
            "prompt": turn.plan.text,
            "model": turn.agent.llm.spec,
            "finish_reason": gen.finish_reason,
            "ttft_s": usage.min_call_ttft_s,
            "latency_s": usage.call_time_s,
            **({"edited_by": edited_by} if edited_by else {}),
            **served,
        },
    )
    run.records.append((turn.order, message))
    run.replies[(name, turn.round)] = message.content
    run.spent += usage.total_tokens
    run.reserved = max(0, run.reserved - turn.reservation) if run.reserved else 0
    run.usage.add_call(name, str(turn.round), usage)
    cached = turn.plan.edge_cached if assembly is not None else None
    for i, (inbound, tokens) in enumerate(zip(turn.plan.inbound, turn.plan.edge_tokens, strict=True)):
        key = edge_key(inbound.source, name, inbound.kind)
        run.usage.add_edge(key, tokens, cached[i] if cached else 0, turn.kv_bytes[i])
    first_token = gen.started_at - started + gen.ttft_s  # assembly ran before started_at, inside the run
    if run.usage.ttft_s is None or first_token < run.usage.ttft_s:
        run.usage.ttft_s = first_token
    return AgentFinished(run.index, name, turn.round, message, usage)
