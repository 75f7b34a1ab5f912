"""Many graphs in one picture: the majority graph of per-task graphs, and the edges one graph lacks.

A topology designer chooses a graph per task; `summary_graph` draws what it chose over a set of tasks: an
edge when at least half of the graphs hold it (its weight the share), on the channel most of them put it on,
spatial ones added by falling share while they stay acyclic, and each agent's share of the graphs it runs in.
`missing_edges` lists edges of one graph that another lacks, drawn dotted ("pruned", or "candidate" in a
designer's before picture).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from kvmesh.graph.dag import dag_choices
from kvmesh.graph.edge import SPATIAL, TEMPORAL, Edge
from kvmesh.graph.graph import CommGraph
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL


def missing_edges(edges: Iterable[Edge], graph: CommGraph) -> list[Edge]:
    """The `edges` that `graph` does not have, whatever their channel or weight (drawn dotted)."""
    kept = {(e.source, e.target, e.kind) for e in graph.edges()}
    return [e for e in edges if (e.source, e.target, e.kind) not in kept]


def summary_graph(agents: Sequence[str], graphs: Sequence[CommGraph]) -> tuple[CommGraph, dict[str, float]]:
    """(the majority graph over `agents`, edge weights = share of `graphs` holding the edge, each edge on the
    channel most of those graphs give it (ties: the first name in sorted order); each agent's share of graphs it is
    in). Spatial edges are added by falling share while they stay acyclic."""
    names = list(agents)
    spatial = [(i, j) for i in range(len(names)) for j in range(len(names)) if i != j]
    several_rounds = any(graph.edges(TEMPORAL) for graph in graphs)
    temporal = [(i, j) for i in range(len(names)) for j in range(len(names))] if several_rounds else []
    n = max(len(graphs), 1)
    kept = {a: sum(a in g.agents for g in graphs) / n for a in names}
    edges = []
    for kind, pairs in ((SPATIAL, spatial), (TEMPORAL, temporal)):
        chosen = [{(e.source, e.target): e.channel for e in graph.edges(kind)} for graph in graphs]
        share = [sum((names[i], names[j]) in c for c in chosen) / n for i, j in pairs]
        order = sorted(range(len(pairs)), key=lambda e: -share[e])
        if kind == SPATIAL:
            taken, _ = dag_choices(pairs, order, lambda e, share=share: share[e] >= 0.5)
        else:
            taken = [s >= 0.5 for s in share]
        for e, (i, j) in enumerate(pairs):
            if taken[e]:
                on = Counter(c[(names[i], names[j])] for c in chosen if (names[i], names[j]) in c)
                channel = min(on, key=lambda name: (-on[name], name)) if on else DEFAULT_CHANNEL
                edges.append(Edge(names[i], names[j], kind, channel, round(share[e], 3)))
    return CommGraph(names, edges), kept


def summary_options(kept: dict[str, float]) -> dict:
    """Drawing options for a summary: agents in fewer than half the graphs faint, each one's share noted."""
    return {
        "pruned_agents": [a for a, share in kept.items() if share < 0.5],
        "notes": {a: f"runs in {share:.0%}" for a, share in kept.items()} if min(kept.values()) < 1 else None,
    }
