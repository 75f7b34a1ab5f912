"""CommGraph: who talks to whom, over which channel, within a round or across rounds.

Two `networkx.DiGraph`s over the same agent names: `spatial` edges pass a message within a round (they must
form a DAG; the runtime walks it level by level) and `temporal` edges pass an agent's output from round r to
round r + 1 (any shape, self-loops included: an agent may read its own previous answer). Every edge carries
`channel` (`text`, `kv-reuse`, `kv-select`, `c2c`) and an optional `weight`.

The decision step is not a node here: after the last round the team's decision reads every agent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace

import networkx as nx

from kvmesh.graph.draw import draw as draw_picture
from kvmesh.graph.draw import to_dot, to_mermaid
from kvmesh.graph.edge import EDGE_KINDS, SPATIAL, Edge, GraphError, check_agent_name, coerce_edge
from kvmesh.graph.presets import build_preset


def _agent_names(agents: Iterable) -> list[str]:
    if isinstance(agents, str):
        raise GraphError(f"agents must be a list of names, got the string {agents!r}")
    names = [a if isinstance(a, str) else getattr(a, "name", None) for a in agents]
    if any(not isinstance(n, str) or not n for n in names):
        raise GraphError("agents must be given as non-empty names or Agent objects")
    for name in names:
        check_agent_name(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GraphError(f"agent names must be unique; repeated: {', '.join(duplicates)}")
    return names


class CommGraph:
    """A communication graph over named agents.

    Args:
        agents: agent names (or `Agent`s), in the order used to break ties when scheduling.
        edges: `Edge`s, or tuples `(source, target)`, `(source, target, kind)` or dicts with Edge's fields.
    """

    def __init__(self, agents: Iterable, edges: Iterable = ()) -> None:
        self.agents: list[str] = _agent_names(agents)
        if not self.agents:
            raise GraphError("a communication graph needs at least one agent")
        self.spatial = nx.DiGraph()
        self.temporal = nx.DiGraph()
        for graph in (self.spatial, self.temporal):
            graph.add_nodes_from(self.agents)
        for edge in edges:
            self.add_edge(edge)
        self.validate()

    # --- building ----------------------------------------------------------------------------------------------

    def add_edge(self, edge: Edge | Sequence | dict) -> None:
        edge = coerce_edge(edge)
        for end in (edge.source, edge.target):
            if end not in self.spatial:
                raise GraphError(
                    f"edge {edge.source} -> {edge.target} names unknown agent {end!r}; agents: {self.agents}"
                )
        graph = self.spatial if edge.kind == SPATIAL else self.temporal
        graph.add_edge(edge.source, edge.target, channel=edge.channel, weight=edge.weight)
        if edge.kind == SPATIAL:
            self.validate()

    def validate(self) -> None:
        """Spatial edges must form a DAG; a cycle is reported with its agents in order."""
        try:
            cycle = nx.find_cycle(self.spatial)
        except nx.NetworkXNoCycle:
            return
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise GraphError(
            f"spatial edges form a cycle: {path}. Spatial edges run within a round and must form a DAG; "
            f"use a temporal edge to pass a message to the next round."
        )

    @classmethod
    def preset(cls, name: str, agents: Iterable, **options) -> CommGraph:
        """Build a named topology: chain, star, tree, complete, layered, random, debate (see kvmesh.graph.presets).

        Options: the preset's own, `temporal` (none, self, complete), `rounds` (unset `temporal` follows it), and
        `channel`."""
        names = _agent_names(agents)
        return cls(names, build_preset(name, names, **options))

    @classmethod
    def from_networkx(cls, graph: nx.DiGraph | nx.MultiDiGraph) -> CommGraph:
        """Edges keep their `kind`, `channel` and `weight` attributes (default: spatial text edges)."""
        fields = ("kind", "channel", "weight")
        edges = [Edge(u, v, **{k: d[k] for k in fields if k in d}) for u, v, d in graph.edges(data=True)]
        return cls(list(graph.nodes), edges)

    # --- reading -----------------------------------------------------------------------------------------------

    def edges(self, kind: str | None = None) -> list[Edge]:
        kinds = EDGE_KINDS if kind is None else (kind,)
        found = []
        for k in kinds:
            graph = self.spatial if k == SPATIAL else self.temporal
            found += [Edge(u, v, k, d["channel"], d.get("weight")) for u, v, d in graph.edges(data=True)]
        return found

    def edge_set(self, kind: str = SPATIAL) -> set[tuple[str, str]]:
        return {(e.source, e.target) for e in self.edges(kind)}

    def predecessors(self, agent: str, kind: str = SPATIAL) -> list[str]:
        """Upstream agents in the team's agent order (deterministic prompt layout)."""
        graph = self.spatial if kind == SPATIAL else self.temporal
        upstream = set(graph.predecessors(agent))
        return [a for a in self.agents if a in upstream]

    def channel(self, source: str, target: str, kind: str = SPATIAL) -> str:
        graph = self.spatial if kind == SPATIAL else self.temporal
        return graph.edges[source, target]["channel"]

    def levels(self) -> list[list[str]]:
        """Agents grouped so that each group only reads from earlier groups (topological generations)."""
        order = {name: i for i, name in enumerate(self.agents)}
        return [sorted(level, key=order.__getitem__) for level in nx.topological_generations(self.spatial)]

    def channels(self) -> set[str]:
        return {e.channel for e in self.edges()}

    def with_channel(self, channel: str) -> CommGraph:
        """A copy with every edge on `channel`."""
        return CommGraph(self.agents, [replace(e, channel=channel) for e in self.edges()])

    # --- pictures ----------------------------------------------------------------------------------------------

    def draw(self, path, **options):
        """Write a PNG or SVG picture; options as `kvmesh.graph.draw.draw` (roles, decision, pruned, tokens)."""
        return draw_picture(self, path, **options)

    def to_mermaid(self, **options) -> str:
        return to_mermaid(self, **options)

    def to_dot(self, **options) -> str:
        return to_dot(self, **options)

    def subgraph(self, agents: Iterable[str]) -> CommGraph:
        keep = set(agents)
        names = [a for a in self.agents if a in keep]
        return CommGraph(names, [e for e in self.edges() if e.source in keep and e.target in keep])

    def to_networkx(self) -> nx.MultiDiGraph:
        graph = nx.MultiDiGraph()
        graph.add_nodes_from(self.agents)
        for e in self.edges():
            graph.add_edge(e.source, e.target, key=e.kind, kind=e.kind, channel=e.channel, weight=e.weight)
        return graph

    # --- serialisation -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"agents": list(self.agents), "edges": [e.to_dict() for e in self.edges()]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> CommGraph:
        if not isinstance(data, dict) or "agents" not in data:
            raise GraphError("a graph description needs an 'agents' list and an optional 'edges' list")
        return cls(data["agents"], data.get("edges", []))

    @classmethod
    def from_json(cls, text: str) -> CommGraph:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise GraphError(f"graph JSON does not parse: {error}") from error
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CommGraph):
            return NotImplemented
        return self.agents == other.agents and set(self.edges()) == set(other.edges())

    def __repr__(self) -> str:
        spatial, temporal = len(self.spatial.edges), len(self.temporal.edges)
        return f"CommGraph(agents={self.agents}, spatial_edges={spatial}, temporal_edges={temporal})"
