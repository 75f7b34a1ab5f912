"""Team: agents + a communication graph + rounds + a decision rule; the API that runs tasks.

team = Team([Agent("solver"), Agent("critic")], graph="chain", rounds=2)
result = team.run("What is 17 * 3?")
for event in team.stream(task): ...
results = team.run_batch(tasks)          # one batched model call per level, across tasks
designed = designer.compile(team, trainset, valset)   # a team whose graph is chosen per task (kvmesh.topology)

A team checks everything once, when it is built (agents, graph, channels of every edge and of the decision)
and when it is asked to run (tasks, per-task graphs); then `stream_batch` hands a `RunPlan` to the scheduler
(`kvmesh.agents.scheduler`), which never sees the team itself. `run`, `run_batch` and `stream` are thin
wrappers over `stream_batch`.

Channels (`kvmesh.kvcomm.channel`): each edge names one, and the team holds one object per channel it uses
(its state, such as kv-reuse's engines and anchors, lives as long as the team); `channels={name: settings}`
sets them up (`reuse=` is the same for kv-reuse).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import networkx as nx

from kvmesh.agents.agent import Agent
from kvmesh.agents.decision import DECISION_METHOD, Decision
from kvmesh.agents.events import Event, TeamFinished
from kvmesh.agents.result import TeamResult
from kvmesh.agents.scheduler import Scheduler
from kvmesh.agents.spec import save_spec, team_from_spec, team_to_spec
from kvmesh.agents.state import RunPlan
from kvmesh.agents.task import Task
from kvmesh.agents.turn import check_task_fits
from kvmesh.graph.edge import DECISION, TEMPORAL, GraphError
from kvmesh.graph.graph import CommGraph
from kvmesh.kvcomm.channel import (
    DEFAULT_CHANNEL,
    VARIANT,
    Channel,
    base_channel,
    channel_for_keyword,
    channel_settings,
    check_channel,
    make_channel,
)

REUSE = channel_for_keyword("reuse")  # the channel `reuse=` sets up
log = logging.getLogger("kvmesh")


@runtime_checkable
class GraphDesigner(Protocol):
    """Anything that chooses each task's graph: `kvmesh.topology` designers implement it.

    `seen_ids` lists the task ids it learned from (training and validation; empty for one that learned nothing):
    an evaluation leaves them out, so a designer is never scored on what it saw. `channels` names every channel its
    graphs may put an edge on beyond the team's own graph's (empty when none): the team sets each up.
    """

    seen_ids: Sequence[str]
    channels: Sequence[str]

    def design_batch(self, tasks: Sequence[Task]) -> list[CommGraph]: ...


def _positive(name: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = "a positive integer or None" if optional else "a positive integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


class Team:
    """A team of agents.

    Args:
        agents: the agents, in the order used for ties in scheduling and for list-style task shards.
        graph: a `CommGraph`, a `networkx.DiGraph`, or a preset name (`chain`, `star`, `tree`, `complete`,
            `layered`, `random`, `debate`).
        rounds: how many times the graph runs; temporal edges carry round r's replies into round r + 1 (a preset
            named here gets `complete` temporal edges when rounds > 1; a graph without any is refused then).
        decision: `"decision"` (a decision-maker agent, default), `"majority"`, `"last"`, or an `Agent`.
        token_budget: per-task cap on prompt + completion tokens; None for no cap.
        seed: seeds sampling for agents with temperature > 0.
        reuse: settings of the kv-reuse engines (`ReuseConfig` or a dict of its fields); used only when an edge
            or the decision uses the `kv-reuse` channel. The engines and their anchors live as long as the team.
        designer: chooses a graph per task (a `kvmesh.topology` designer, usually set by its `compile`);
            `graph` is then the candidate graph it chooses from, and the one drawn as "before".
        channels: settings per channel name (each channel's settings class or a dict of its fields).
        repeat_rounds: accept a multi-round graph without temporal edges, with a warning (its greedy rounds
            repeat the first): a designer's pruned graph, or a spec saved before presets had them. Without it
            such a team is refused, unless an agent samples (temperature > 0), which only warns.
    """

    def __init__(
        self,
        agents: Sequence[Agent],
        graph: CommGraph | nx.DiGraph | str = "chain",
        rounds: int = 1,
        decision: str | Agent | dict | Decision = DECISION_METHOD,
        token_budget: int | None = None,
        seed: int | None = None,
        reuse: object | dict | None = None,
        designer: GraphDesigner | None = None,
        channels: Mapping[str, object] | None = None,
        *,
        repeat_rounds: bool = False,
    ) -> None:
        agents = list(agents)
        if not agents:
            raise ValueError("a team needs at least one agent")
        if not all(isinstance(a, Agent) for a in agents):
            raise TypeError("team agents must be kvmesh Agent objects")
        self.agents = agents
        _positive("rounds", rounds)
        _positive("token_budget", token_budget, optional=True)
        self.rounds, self.token_budget, self.seed = rounds, token_budget, seed
        self.graph = self._coerce_graph(graph)
        if rounds > 1 and not self.graph.edges(TEMPORAL) and designer is None:
            self._rounds_that_repeat(repeat_rounds)
        self.decision = Decision.coerce(decision, first_agent=agents[0])
        if self.decision.agent is not None and self.decision.agent.name in self.graph.agents:
            raise ValueError(f"the decision agent's name {self.decision.agent.name!r} is also a team agent's name")
        # a variant's dict stays a dict: its fields go on top of what its label derives (`make_channel`)
        settings = {
            name: value if VARIANT in name and isinstance(value, dict) else channel_settings(name, value)
            for name, value in (channels or {}).items()
        }
        if reuse is not None:
            settings[REUSE] = channel_settings(REUSE, reuse, label="reuse")
        self._settings = settings
        for edge in self.graph.edges():
            check_channel(edge.channel, f"edge {edge.source} -> {edge.target} ({edge.kind})")
        if designer is not None and not isinstance(designer, GraphDesigner):
            raise TypeError(
                "designer must have a design_batch(tasks) method, a seen_ids list (the task ids it learned from, "
                "empty if none) and a channels list (those its graphs may use beyond the team's own, empty if "
                f"none), got {type(designer).__name__}"
            )
        self.designer = designer
        designed = set(designer.channels) if designer is not None else set()
        for name in designed:
            check_channel(name, f"{type(designer).__name__}.channels")
        self.channels: dict[str, Channel] = {}
        for name in sorted(self._channel_names(self.graph) | designed):
            self.channels[name] = make_channel(name, settings.get(name), settings.get(base_channel(name)))
        self._check_channels(self.graph)

    def _rounds_that_repeat(self, accepted: bool) -> None:
        """A multi-round graph without temporal edges: no round reads another, so greedy rounds repeat the first."""
        problem = (
            f"rounds={self.rounds} but the graph has no temporal edges, so no round reads the one before it and "
            "greedy rounds repeat the first word for word"
        )
        if accepted or any(agent.temperature > 0 for agent in self.agents):
            log.warning("%s", problem)
            return
        raise GraphError(
            f"{problem}; add temporal edges (CommGraph.preset(..., temporal='complete' or 'self'); in a spec, "
            "graph: {preset: NAME, options: {temporal: complete}} or edges of kind temporal; on the command line, "
            "--temporal complete) or run one round"
        )

    def _coerce_graph(self, graph) -> CommGraph:
        names = [a.name for a in self.agents]
        if isinstance(graph, str):
            return CommGraph.preset(graph, names, rounds=self.rounds)
        if isinstance(graph, nx.DiGraph | nx.MultiDiGraph):
            graph = CommGraph.from_networkx(graph)
        if not isinstance(graph, CommGraph):
            raise TypeError(f"graph must be a CommGraph, a networkx DiGraph or a preset name, got {type(graph)}")
        graph.validate()
        missing, extra = set(names) - set(graph.agents), set(graph.agents) - set(names)
        if missing or extra:
            raise GraphError(
                f"the graph and the team disagree: agents without a graph node: {sorted(missing)}; "
                f"graph nodes without an agent: {sorted(extra)}"
            )
        return graph

    def graph_channels(self) -> set[str]:
        """The channels of the team's own graph and decision (a designer's further channels left out)."""
        return self._channel_names(self.graph)

    def _channel_names(self, graph: CommGraph) -> set[str]:
        names = graph.channels() | {DEFAULT_CHANNEL}
        return names | ({self.decision.channel} if self.decision.maker else set())

    def _check_channels(self, graph: CommGraph) -> None:
        """Every edge's channel (and the decision's) must run here and accept the two agents it joins, and no
        agent may read caches over two channels (a turn's cache is placed by one)."""
        agents = {a.name: a for a in self.agents}
        caches: dict[str, set[str]] = {}
        for edge in graph.edges():
            where = f"edge {edge.source} -> {edge.target} ({edge.kind})"
            self.channels[edge.channel].check(agents[edge.source], agents[edge.target], where)
            if self.channels[edge.channel].carries_caches:
                caches.setdefault(edge.target, set()).add(edge.channel)
        mixed = {name: sorted(channels) for name, channels in caches.items() if len(channels) > 1}
        if mixed:
            name, channels = next(iter(mixed.items()))
            raise GraphError(
                f"agent {name} reads caches over {' and '.join(channels)}, but a turn's cache is placed from one "
                "channel's caches: give its incoming edges one cache channel (text edges may join it)"
            )
        if self.decision.maker:
            maker, channel = self.decision.agent, self.decision.channel
            for agent in self.agents:
                self.channels[channel].check(agent, maker, f"edge {agent.name} -> {maker.name} ({DECISION})")

    @property
    def members(self) -> list[Agent]:
        """Every agent that may run: the team's, then its decision maker (if it has one)."""
        return [*self.agents, *([self.decision.agent] if self.decision.agent else [])]

    @property
    def agent_names(self) -> list[str]:
        return [a.name for a in self.agents]

    @property
    def reuse(self) -> object:
        """The settings `reuse=` sets (kv-reuse's `ReuseConfig`; defaults when the team gave none)."""
        return self._settings.get(REUSE) or channel_settings(REUSE)

    def channel_stats(self) -> dict[str, dict]:
        """What each channel the team uses did, by name (channels with nothing to say are left out)."""
        return {name: stats for name, channel in self.channels.items() if (stats := channel.stats())}

    def picture_options(self) -> dict:
        """The drawing options the team implies (`kvmesh.graph.draw`): its decision maker and each agent's role."""
        decision = self.decision.agent.name if self.decision.agent is not None else None
        return {"decision": decision, "roles": {agent.name: agent.role for agent in self.agents}}

    def with_graph(self, graph: CommGraph | nx.DiGraph | str, designer: GraphDesigner | None = None) -> Team:
        """A team like this one (the same agent objects and settings, new channel state) on another graph."""
        return Team(
            self.agents,
            graph,
            self.rounds,
            self.decision,
            self.token_budget,
            self.seed,
            designer=designer,
            channels=self._settings,
            repeat_rounds=True,  # a designer's graph may have pruned every temporal edge
        )

    def with_channels(self, channels: Mapping[str, object]) -> Team:
        """A team like this one (the same agents, graph and designer; new channel state) whose channels named in
        `channels` take those settings (each channel's settings class or a dict of its fields)."""
        return Team(
            self.agents,
            self.graph,
            self.rounds,
            self.decision,
            self.token_budget,
            self.seed,
            designer=self.designer,
            channels={**self._settings, **channels},
            repeat_rounds=True,  # this team was accepted already
        )

    # --- per-task graphs ---------------------------------------------------------------------------------------

    def graphs_for(self, tasks: Sequence[Task]) -> list[CommGraph]:
        """Each task's graph: the designer's choice, or the team's graph."""
        if self.designer is None:
            return [self.graph] * len(tasks)
        graphs = self.designer.design_batch(tasks)
        if len(graphs) != len(tasks):
            raise ValueError(f"the designer returned {len(graphs)} graphs for {len(tasks)} tasks")
        return graphs

    def check_graph(self, graph: CommGraph) -> None:
        """A per-task graph must use some of this team's agents, and only channels the team set up (those of
        its own graph, its decision and its designer's), each on agents it can join."""
        if graph is self.graph:
            return
        if not isinstance(graph, CommGraph):
            raise TypeError(f"a task's graph must be a CommGraph, got {type(graph).__name__}")
        unknown = sorted(set(graph.agents) - set(self.agent_names))
        if unknown:
            raise GraphError(f"a task's graph names agents the team does not have: {unknown}; team: {self.agent_names}")
        for edge in graph.edges():
            check_channel(edge.channel, f"edge {edge.source} -> {edge.target} ({edge.kind})")
        extra = sorted(self._channel_names(graph) - set(self.channels))
        if extra:
            raise GraphError(
                f"a task's graph has {', '.join(extra)} edges but the team's own graph has none; put the team on "
                f"them (graph.with_channel({extra[0]!r})), or give it a designer whose channels name them, so "
                "their state exists"
            )
        self._check_channels(graph)

    # --- running -----------------------------------------------------------------------------------------------

    def check_tasks(self, tasks: Sequence[Task | str]) -> list[Task]:
        """`tasks` as `Task`s, each checked as a run checks it before its first call: its shards name this team's
        agents, and each agent's share of it fits its model's context (which loads every model)."""
        prepared = [Task.coerce(t) for t in tasks]
        position = {agent.name: i for i, agent in enumerate(self.agents)}
        for task in prepared:
            task.check_shards(self.agent_names)
            check_task_fits(task, self.members, position.get)
        return prepared

    def plan(self) -> RunPlan:
        """What the scheduler runs: this team, resolved."""
        return RunPlan(tuple(self.agents), self.rounds, self.decision, self.token_budget, self.seed, self.channels)

    def stream_batch(
        self,
        tasks: Sequence[Task | str],
        graphs: Sequence[CommGraph] | None = None,
        batch_size: int | None = None,
        tokens: bool = False,
    ) -> Iterator[Event]:
        """Run many tasks together, yielding typed events as they happen; each task ends with its
        `TeamFinished` (`task_index` is the task's position in `tasks`). `tokens`: also yield each reply's
        pieces as they are decoded (`TokenGenerated`).

        `graphs`: one graph per task instead of `graphs_for` (a designer's training samples, for instance);
        `batch_size`: run the tasks that many at a time (default: all at once). Everything is checked before the
        first model call: tasks, shards (each agent's share of a task must fit its model's context), graphs and
        their channels; each prompt is checked against its model's context when it is planned."""
        _positive("batch_size", batch_size, optional=True)
        prepared = self.check_tasks(tasks)
        if graphs is not None and len(graphs) != len(prepared):
            raise ValueError(f"got {len(graphs)} graphs for {len(prepared)} tasks; give one graph per task")
        for graph in {id(g): g for g in graphs or ()}.values():
            self.check_graph(graph)
        return self._stream(prepared, graphs, batch_size or max(len(prepared), 1), tokens)

    def _stream(
        self, tasks: list[Task], graphs: Sequence[CommGraph] | None, size: int, tokens: bool = False
    ) -> Iterator[Event]:
        plan = self.plan()
        for start in range(0, len(tasks), size):
            chunk = tasks[start : start + size]
            if graphs is None:  # the designer's (or the team's) graphs, checked before the chunk's first call
                chunk_graphs = self.graphs_for(chunk)
                for graph in {id(g): g for g in chunk_graphs}.values():
                    self.check_graph(graph)
            else:
                chunk_graphs = list(graphs[start : start + size])
            for event in Scheduler(plan, chunk, chunk_graphs, tokens).events():
                yield replace(event, task_index=event.task_index + start) if start else event

    def stream(self, task: Task | str, tokens: bool = False) -> Iterator[Event]:
        """Run one task, yielding typed events; the last one is `TeamFinished` with the result. `tokens`: also
        yield each reply's pieces as the model decodes them (`TokenGenerated`)."""
        return self.stream_batch([task], tokens=tokens)

    def run(self, task: Task | str) -> TeamResult:
        return self.run_batch([task])[0]

    def run_batch(
        self,
        tasks: Sequence[Task | str],
        batch_size: int | None = None,
        graphs: Sequence[CommGraph] | None = None,
    ) -> list[TeamResult]:
        """Run many tasks, batching each level's model calls across tasks (`batch_size` tasks at a time);
        results in input order."""
        finished = [e for e in self.stream_batch(tasks, graphs, batch_size) if isinstance(e, TeamFinished)]
        return [e.result for e in sorted(finished, key=lambda e: e.task_index)]

    # --- specs -------------------------------------------------------------------------------------------------

    def to_spec(self) -> dict:
        return team_to_spec(self)

    def save_spec(self, path: str | Path) -> None:
        save_spec(self, path)

    @classmethod
    def from_spec(cls, source: str | Path | dict, designer_loader: Callable | None = None) -> Team:
        """Build a team from a YAML or JSON file (or an already parsed dict); see kvmesh.agents.spec.

        A spec that names a saved designer needs `designer_loader` (`kvmesh.topology.load_designer`), or use
        `kvmesh.cli.specs.load_team`, which passes it."""
        return team_from_spec(cls, source, designer_loader)

    def __repr__(self) -> str:
        return (
            f"Team(agents={self.agent_names}, graph={self.graph!r}, rounds={self.rounds}, "
            f"decision={self.decision.method!r})"
        )
