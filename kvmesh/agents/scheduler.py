"""The scheduler: runs a batch of tasks on a team's plan, one engine step at a time, and yields events as it goes.

Each task walks its stages (`kvmesh.agents.state`): every round's levels of its graph, then the decision step.
A stage's turns go into one running batch per model, shared by every agent and every task:

    Scheduler.step()
      1. plan ready turns     tasks whose turns are all done move on: their next stage's turns are planned
                              (`kvmesh.agents.turn.plan_turn`), or the task finishes
      2. submit               each turn's next rows join its model's running batch: the prefill-only rows its
                              cache needs first (one row for a template several turns wait on), then its own
      3. step each model      `RunningBatch.step()`: admit waiting rows, one batched forward pass over them all
      4. record what finished a row's result goes back to the turns that asked for it; a turn whose own row
                              finished becomes its message (`kvmesh.agents.turn.record`)

So tasks never wait for each other's slowest reply, while a task's own stages run in order and every prompt
is exactly what a level-by-level run would build. Before the first call every channel the team uses prepares
each agent's model (`Channel.prepare`), so a model a channel cannot serve fails before any work is done.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Iterator, Sequence

from kvmesh.agents.decision import DECISION_ROUND
from kvmesh.agents.events import Event, RoundFinished, TeamFinished, TokenGenerated
from kvmesh.agents.state import RunPlan, TaskRun, task_runs
from kvmesh.agents.task import Task
from kvmesh.agents.turn import DEFER, Turn, plan_turn, record
from kvmesh.agents.usage import Usage
from kvmesh.graph.graph import CommGraph
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, ChannelNotAvailableError
from kvmesh.kvcomm.rope import UnsupportedModelError
from kvmesh.llm.base import Generation, GenerationRequest, LanguageModel, RunningBatch


class ModelBatches:
    """One running batch per model, created on first use."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.by_model: dict[int, RunningBatch] = {}

    def submit(self, model: LanguageModel, request: GenerationRequest, tag: int) -> None:
        if id(model) not in self.by_model:
            self.by_model[id(model)] = model.new_batch(self.seed)
        self.by_model[id(model)].submit(request, tag)

    def busy(self) -> list[RunningBatch]:
        return [batch for batch in self.by_model.values() if batch.has_work]


class Scheduler:
    """Runs `tasks`, each on its graph, on the team described by `plan`; `events()` drives it to the end."""

    def __init__(self, plan: RunPlan, tasks: Sequence[Task], graphs: Sequence[CommGraph], tokens: bool = False) -> None:
        self.plan = plan
        self.tokens = tokens  # stream each reply's pieces as `TokenGenerated` events
        self.pieces: list[Event] = []  # pieces decoded during the current step
        self.started = time.perf_counter()
        self.runs = task_runs(plan, tasks, graphs)
        self.batches = ModelBatches(plan.seed)
        self.ready: deque[TaskRun] = deque(self.runs)  # tasks whose turns are all done
        self.turns: dict[Turn, None] = {}  # turns planned and not finished, in planning order
        self.rows: dict[int, tuple[GenerationRequest, list[Turn]]] = {}  # rows out, by id: who waits for them

    def prepare(self) -> None:
        """Let every channel set up the model of each agent on one of its edges (or the decision's); an error names
        the agent and channel."""
        decision = [self.plan.decision.agent] if self.plan.decision.agent is not None else []
        agents = [*self.plan.agents, *decision]
        ends: dict[str, set[str]] = {}  # channel -> the agents at either end of one of its edges
        for run in self.runs:
            for edge in run.graph.edges():
                ends.setdefault(edge.channel, set()).update((edge.source, edge.target))
        if decision:
            ends.setdefault(self.plan.decision.channel, set()).update(agent.name for agent in agents)
        adapted, kv = [a.name for a in agents if a.adapter is not None], sorted(set(ends) - {DEFAULT_CHANNEL})
        if adapted and kv:  # a task's caches are shared by every agent of a model, whatever its adapter
            raise ValueError(
                f"agents {adapted} run with LoRA adapters and this team uses {', '.join(kv)}: KV channels share "
                "caches between the agents of one model, and a cache made under one adapter is not another's. "
                "Use channel='text' edges (and decision channel) in a team with adapters."
            )
        for agent in agents:
            for name, channel in self.plan.channels.items():
                if agent.name not in ends.get(name, ()):
                    continue
                try:
                    channel.prepare(agent.llm)
                except (ValueError, NotImplementedError) as error:
                    # a model the channel cannot serve: text edges can; other errors (its saved state) say their fix
                    unservable = isinstance(error, ChannelNotAvailableError | UnsupportedModelError)
                    fix = " Use channel='text' edges for it." if unservable else ""
                    raise type(error)(f"agent {agent.name!r} cannot take part in {name}: {error}.{fix}") from error

    def events(self) -> Iterator[Event]:
        self.prepare()
        while not all(run.finished for run in self.runs):
            yield from self.step()

    def step(self) -> list[Event]:
        events: list[Event] = []
        # 1. plan ready turns: each task whose turns are all done moves on to its next stage, or finishes
        while self.ready:
            events += self._advance(self.ready.popleft())
        # 2. submit: every planned turn's next rows go into its model's running batch
        for turn in self.turns:
            self._submit(turn)
        # 3. step each model's batch: admit waiting rows, then one batched forward pass
        busy = self.batches.busy()
        if not busy and not events and not self.ready:
            raise RuntimeError("the scheduler has unfinished tasks but nothing to run (a bug in kvmesh)")
        finished = [done for batch in busy for done in batch.step()]
        events += self.pieces
        self.pieces = []
        # 4. record what finished: results go back to the turns waiting for them
        for key, generation in finished:
            events += self._deliver(key, generation.check())  # a failed row (a broken cache: NaN) stops the run
        return events

    def _submit(self, turn: Turn) -> None:
        for request in turn.rows():
            if id(request) in self.rows:  # a row another turn already asked for (a shared template)
                self.rows[id(request)][1].append(turn)
                continue
            self.rows[id(request)] = (request, [turn])
            if self.tokens and not request.prefill_only:  # the turn's own row (shared rows are prefill-only)
                request.on_text = functools.partial(self._piece, turn)
            self.batches.submit(turn.agent.llm, request, id(request))

    def _piece(self, turn: Turn, text: str) -> None:
        self.pieces.append(TokenGenerated(turn.run.index, turn.agent.name, turn.round, text))

    def _deliver(self, key: int, generation: Generation) -> list[Event]:
        request, waiting = self.rows.pop(key)
        events: list[Event] = []
        for turn in waiting:
            own = turn.take(request, generation)
            if own is None:
                continue
            events.append(record(turn, own, self.started))
            del self.turns[turn]
            turn.run.outstanding -= 1
            if turn.run.outstanding == 0:
                self.ready.append(turn.run)
        return events

    def _plan(self, run: TaskRun, agents) -> list[Event]:
        stage = run.stages[run.stage]
        events = []
        for agent in agents:
            order = (run.stage, stage.agents.index(agent))
            for item in plan_turn(self.plan, run, agent, stage.round, order):
                if item is DEFER:
                    run.deferred.append(agent)
                elif isinstance(item, Turn):
                    self.turns[item] = None
                    run.outstanding += 1
                else:
                    events.append(item)
        return events

    def _advance(self, run: TaskRun) -> list[Event]:
        """Move a task whose current turns are done on: deferred turns first, then the next stage with work."""
        events: list[Event] = []
        stages = run.stages
        while run.outstanding == 0:
            if run.deferred:  # reservations have settled: plan the waiting turns again
                waiting, run.deferred = run.deferred, []
                events += self._plan(run, waiting)
                continue
            if run.stage >= 0:
                current = stages[run.stage]
                following = stages[run.stage + 1] if run.stage + 1 < len(stages) else None
                if current.round != DECISION_ROUND and (following is None or following.round != current.round):
                    key = str(current.round)
                    events.append(RoundFinished(run.index, current.round, run.usage.per_round.get(key, Usage())))
            run.stage += 1
            if run.stage == len(stages):
                run.store.clear()  # nobody reads this task's caches any more
                run.finished = True
                events.append(
                    TeamFinished(run.index, run.result(self.plan.decision, time.perf_counter() - self.started))
                )
                return events
            run.reserved = 0
            events += self._plan(run, stages[run.stage].agents)
        return events
