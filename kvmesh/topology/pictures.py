"""Before and after pictures of a designer: every candidate edge against the graphs the designer chose.

`before.png` is the full candidate graph: the team's own graph solid (where the designer starts, and its anchor)
and every other candidate edge dotted, so both directions between two agents show. `after.png`
summarises the designer's choices over a set of tasks (usually validation tasks): an edge is drawn when the
designer chose it for at least half of them, its width the share of tasks; the team's edges it dropped are dotted;
an agent kept for fewer than half of them is drawn as pruned, and when some agent was left out of some task, every
agent's note says in what share of tasks it ran (`kvmesh viz` draws a designer's evaluation run the same way, from
the graphs saved with its samples). A fixed-graph designer's after picture is simply its graph. Per-task designers
also get `example.png`, one task's graph. Each picture has a Mermaid twin (`.mmd`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kvmesh.agents import CommGraph, Task
from kvmesh.agents.graph import SPATIAL, TEMPORAL, Edge
from kvmesh.topology.candidates import Candidates, dag_choices
from kvmesh.topology.draw import team_picture_options, write_picture

if TYPE_CHECKING:
    from kvmesh.topology.designer import Designer


def missing_edges(edges: Iterable[Edge], graph: CommGraph) -> list[Edge]:
    """The `edges` that `graph` does not have, whatever their channel or weight (drawn dotted)."""
    kept = {(e.source, e.target, e.kind) for e in graph.edges()}
    return [e for e in edges if (e.source, e.target, e.kind) not in kept]


def summary_graph(agents: Sequence[str], graphs: Sequence[CommGraph]) -> tuple[CommGraph, dict[str, float]]:
    """(the majority graph over `agents`, edge weights = share of `graphs` holding the edge; each agent's share
    of graphs it is in). Spatial edges are added by falling share while they stay acyclic."""
    rounds = 2 if any(graph.edges(TEMPORAL) for graph in graphs) else 1
    channels = {e.channel for graph in graphs for e in graph.edges()} or {"text"}
    candidates = Candidates.build(list(agents), rounds, sorted(channels)[0])
    names = candidates.agents
    n = max(len(graphs), 1)
    kept = {a: sum(a in g.agents for g in graphs) / n for a in names}
    edges = []
    for kind, pairs in ((SPATIAL, candidates.spatial), (TEMPORAL, candidates.temporal)):
        chosen = [graph.edge_set(kind) for graph in graphs]
        share = [sum((names[i], names[j]) in c for c in chosen) / n for i, j in pairs]
        order = sorted(range(len(pairs)), key=lambda e: -share[e])
        if kind == SPATIAL:
            taken, _ = dag_choices(pairs, order, lambda e, share=share: share[e] >= 0.5)
        else:
            taken = [s >= 0.5 for s in share]
        for e, (i, j) in enumerate(pairs):
            if taken[e]:
                edges.append(Edge(names[i], names[j], kind, candidates.channel, round(share[e], 3)))
    return CommGraph(list(names), edges), kept


def summary_options(kept: dict[str, float]) -> dict:
    """Drawing options for a summary: agents in fewer than half the graphs faint, each one's share noted."""
    return {
        "pruned_agents": [a for a, share in kept.items() if share < 0.5],
        "notes": {a: f"runs in {share:.0%}" for a, share in kept.items()} if min(kept.values()) < 1 else None,
    }


def write_design_pictures(designer: Designer, tasks: Sequence[Task], folder: str | Path) -> list[Path]:
    """before/after (and for per-task designers an example task) as PNG and Mermaid under `folder`."""
    folder = Path(folder)
    team = designer.team
    options = team_picture_options(team)
    graphs = designer.design_batch(list(tasks)) if tasks else designer.design_batch([Task("fixed graph")])
    written = []
    candidates = designer.candidates
    before = {"pruned": missing_edges(candidates.edges(), team.graph), "faint_label": "candidate"}
    before_title = (
        f"before: {len(candidates.spatial) + len(candidates.temporal)} candidate edges; "
        f"solid: the team's graph ({len(team.graph.edges())})"
    )
    for suffix in (".png", ".mmd"):
        written.append(write_picture(team.graph, folder / f"before{suffix}", title=before_title, **options, **before))
    if designer.per_task:
        after, kept = summary_graph(team.agent_names, graphs)
    else:  # one graph: draw it with its edge probabilities as weights
        after, kept = graphs[0], dict.fromkeys(team.agent_names, 1.0)
    where = f"{len(graphs)} tasks" if designer.per_task else "every task"
    after_title = f"after: {designer.kind}, {where}"
    extra = {"pruned": missing_edges(team.graph.edges(), after), "layout": team.graph, **summary_options(kept)}
    for suffix in (".png", ".mmd"):
        written.append(write_picture(after, folder / f"after{suffix}", title=after_title, **options, **extra))
    if designer.per_task and tasks:
        first = graphs[0]
        shown = CommGraph(list(team.agent_names), first.edges())
        missing = [a for a in team.agent_names if a not in first.agents]
        title = f"{designer.kind} on task {tasks[0].id or 0}"
        extra = {"pruned": missing_edges(team.graph.edges(), first), "pruned_agents": missing, "layout": team.graph}
        written.append(write_picture(shown, folder / "example.png", title=title, **options, **extra))
    return written
