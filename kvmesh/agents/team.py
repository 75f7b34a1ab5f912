"""Team: agents + a communication graph + rounds + a decision rule; runs tasks through the runtime.

team = Team([Agent("solver"), Agent("critic")], graph="chain", rounds=2)
result = team.run("What is 17 * 3?")
for event in team.stream(task): ...
results = team.run_batch(tasks)          # one batched model call per level, across tasks
designed = designer.compile(team, trainset, valset)   # a team whose graph is chosen per task (kvmesh.topology)

Channels: `text` and `kv-reuse` run (`kvmesh.agents.reuse_channel`); a kv-reuse edge must join agents on the
same model, since a cache means something only to the model that made it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import networkx as nx

from kvmesh.agents.agent import Agent
from kvmesh.agents.decision import Decision
from kvmesh.agents.events import Event, TeamFinished
from kvmesh.agents.graph import RUNNABLE_CHANNELS, CommGraph, GraphError
from kvmesh.agents.result import TeamResult
from kvmesh.agents.reuse_channel import KV_REUSE, ReuseChannel
from kvmesh.agents.runtime import execute
from kvmesh.agents.task import Task
from kvmesh.kvcomm.reuse import ReuseConfig


class GraphDesigner(Protocol):
    """Anything that chooses each task's graph: `kvmesh.topology` designers implement it."""

    def design_batch(self, tasks: Sequence[Task]) -> list[CommGraph]: ...


class ChannelNotAvailableError(NotImplementedError):
    """An edge uses a KV channel that this version of kvmesh cannot run yet."""


def _check_channels(graph: CommGraph) -> None:
    for edge in graph.edges():
        if edge.channel not in RUNNABLE_CHANNELS:
            raise ChannelNotAvailableError(
                f"edge {edge.source} -> {edge.target} ({edge.kind}) uses channel {edge.channel!r}, which is not "
                f"available yet; available: {', '.join(RUNNABLE_CHANNELS)}. Set channel='text' on that edge."
            )


def _same_model(a: Agent, b: Agent) -> bool:
    return a.model is b.model or a.model_spec == b.model_spec


def _check_kv_models(agents: dict[str, Agent], graph: CommGraph, decision: Decision) -> None:
    pairs = [(agents[e.source], agents[e.target], e.kind) for e in graph.edges() if e.channel == KV_REUSE]
    if decision.channel == KV_REUSE and decision.agent is not None:
        pairs += [(agent, decision.agent, "decision") for agent in agents.values()]
    for source, target, kind in pairs:
        if not _same_model(source, target):
            raise ValueError(
                f"kv-reuse edge {source.name} -> {target.name} ({kind}) joins agents on different models "
                f"({source.model_spec} and {target.model_spec}); a cache is only meaningful to the model that "
                f"made it. Use channel='text' on that edge, or put both agents on one model."
            )


class Team:
    """A team of agents.

    Args:
        agents: the agents, in the order used for ties in scheduling and for list-style task shards.
        graph: a `CommGraph`, a `networkx.DiGraph`, or a preset name (`chain`, `star`, `tree`, `complete`,
            `layered`, `random`, `debate`).
        rounds: how many times the graph runs; temporal edges carry round r's replies into round r + 1.
        decision: `"decision"` (a decision-maker agent, default), `"majority"`, `"last"`, or an `Agent`.
        token_budget: per-task cap on prompt + completion tokens; None for no cap.
        seed: seeds sampling for agents with temperature > 0.
        reuse: settings of the kv-reuse engines (`ReuseConfig`); used only when an edge or the decision
            uses the `kv-reuse` channel. The engines and their anchors live as long as the team.
        designer: chooses a graph per task (a `kvmesh.topology` designer, usually set by its `compile`);
            `graph` is then the candidate graph it chooses from, and the one drawn as "before".
    """

    def __init__(
        self,
        agents: Sequence[Agent],
        graph: CommGraph | nx.DiGraph | str = "chain",
        rounds: int = 1,
        decision: str | Agent | dict | Decision = "decision",
        token_budget: int | None = None,
        seed: int | None = None,
        reuse: ReuseConfig | dict | None = None,
        designer: GraphDesigner | None = None,
    ) -> None:
        agents = list(agents)
        if not agents:
            raise ValueError("a team needs at least one agent")
        if not all(isinstance(a, Agent) for a in agents):
            raise TypeError("team agents must be kvmesh Agent objects")
        self.agents = agents
        self.graph = self._coerce_graph(graph)
        _check_channels(self.graph)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        self.rounds = rounds
        if token_budget is not None and (
            isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1
        ):
            raise ValueError(f"token_budget must be a positive integer or None, got {token_budget!r}")
        self.token_budget = token_budget
        self.seed = seed
        self.decision = Decision.coerce(decision, first_agent=agents[0])
        if self.decision.agent is not None and self.decision.agent.name in self.graph.agents:
            raise ValueError(f"the decision agent's name {self.decision.agent.name!r} is also a team agent's name")
        _check_kv_models({a.name: a for a in agents}, self.graph, self.decision)
        if isinstance(reuse, dict):
            unknown = set(reuse) - set(ReuseConfig.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown reuse settings {sorted(unknown)}; see kvmesh.kvcomm.ReuseConfig")
            reuse = ReuseConfig(**reuse)
        self.reuse = ReuseChannel(reuse)
        if designer is not None and not callable(getattr(designer, "design_batch", None)):
            raise TypeError(f"designer must have a design_batch(tasks) method, got {type(designer).__name__}")
        self.designer = designer

    @property
    def uses_kv_reuse(self) -> bool:
        return KV_REUSE in self.graph.channels() or self.decision.channel == KV_REUSE

    def _coerce_graph(self, graph) -> CommGraph:
        names = [a.name for a in self.agents]
        if isinstance(graph, str):
            return CommGraph.preset(graph, names)
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

    @property
    def agent_names(self) -> list[str]:
        return [a.name for a in self.agents]

    def with_graph(self, graph: CommGraph | nx.DiGraph | str, designer: GraphDesigner | None = None) -> Team:
        """A team like this one (the same agent objects, settings and reuse config) on another graph."""
        return Team(
            self.agents,
            graph,
            self.rounds,
            self.decision,
            self.token_budget,
            self.seed,
            self.reuse.config,
            designer,
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
        """A per-task graph must use some of this team's agents, runnable channels, and kv-reuse only on a team
        that set its engines up (an edge or the decision on kv-reuse in the team's own graph)."""
        if graph is self.graph:
            return
        if not isinstance(graph, CommGraph):
            raise TypeError(f"a task's graph must be a CommGraph, got {type(graph).__name__}")
        unknown = sorted(set(graph.agents) - set(self.agent_names))
        if unknown:
            raise GraphError(f"a task's graph names agents the team does not have: {unknown}; team: {self.agent_names}")
        _check_channels(graph)
        if KV_REUSE in graph.channels() and not self.uses_kv_reuse:
            raise GraphError(
                "a task's graph has kv-reuse edges but the team's own graph has none; put the team on kv-reuse "
                "(graph.with_channel('kv-reuse')) so its engines exist"
            )
        _check_kv_models({a.name: a for a in self.agents}, graph, self.decision)

    # --- running -----------------------------------------------------------------------------------------------

    def _prepare(self, tasks: Sequence[Task | str]) -> list[Task]:
        prepared = [Task.coerce(t) for t in tasks]
        for task in prepared:
            task.check_shards(self.agent_names)
        return prepared

    def stream(self, task: Task | str) -> Iterator[Event]:
        """Run one task, yielding typed events; the last one is `TeamFinished` with the result."""
        return execute(self, self._prepare([task]))

    def run(self, task: Task | str) -> TeamResult:
        return self.run_batch([task])[0]

    def run_batch(
        self,
        tasks: Sequence[Task | str],
        batch_size: int | None = None,
        graphs: Sequence[CommGraph] | None = None,
    ) -> list[TeamResult]:
        """Run many tasks, batching each level's model calls across tasks (`batch_size` tasks at a time).

        `graphs`: one graph per task instead of `graphs_for` (a designer's training samples, for instance).
        """
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        prepared = self._prepare(tasks)
        if graphs is not None and len(graphs) != len(prepared):
            raise ValueError(f"got {len(graphs)} graphs for {len(prepared)} tasks; give one graph per task")
        size = batch_size or max(len(prepared), 1)
        results: list[TeamResult] = []
        for start in range(0, len(prepared), size):
            chunk = prepared[start : start + size]
            chunk_graphs = None if graphs is None else graphs[start : start + size]
            finished = [e for e in execute(self, chunk, chunk_graphs) if isinstance(e, TeamFinished)]
            results.extend(e.result for e in sorted(finished, key=lambda e: e.task_index))  # input order
        return results

    # --- specs -------------------------------------------------------------------------------------------------

    def to_spec(self) -> dict:
        from kvmesh.agents.spec import team_to_spec

        return team_to_spec(self)

    def save_spec(self, path: str | Path) -> None:
        from kvmesh.agents.spec import save_spec

        save_spec(self, path)

    @classmethod
    def from_spec(cls, source: str | Path | dict) -> Team:
        """Build a team from a YAML or JSON file (or an already parsed dict); see kvmesh.agents.spec."""
        from kvmesh.agents.spec import team_from_spec

        return team_from_spec(source)

    def __repr__(self) -> str:
        return (
            f"Team(agents={self.agent_names}, graph={self.graph!r}, rounds={self.rounds}, "
            f"decision={self.decision.method!r})"
        )
