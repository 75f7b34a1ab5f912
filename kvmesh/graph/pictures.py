"""Pictures of what a topology designer chose: its before and after pictures, and the summary a run draws.

`write_design_pictures` writes `before.png`, the full candidate graph: the team's own graph solid (where the
designer starts, and its anchor) and every other candidate edge dotted, so both directions between two agents
show; and `after.png`, which summarises the designer's choices over a set of tasks (usually validation tasks): an
edge is drawn when the designer chose it for at least half of them, its width the share of tasks; the team's edges
it dropped are dotted; an agent kept for fewer than half of them is drawn as pruned, and when some agent was left
out of some task, every agent's note says in what share of tasks it ran. A fixed-graph designer's after picture is
simply its graph. Per-task designers also get `example.png`, one task's graph. Each picture but the example has a
Mermaid twin (`.mmd`).

`designed_picture` is the after picture's graph and options, which `kvmesh viz` also draws for a designer's
evaluation run (from the graphs saved with its samples). Designers live above this package
(`kvmesh.topology`), so the caller passes in what they chose: the team's graph, the candidate edges, the graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kvmesh.graph.draw import write_picture
from kvmesh.graph.edge import Edge
from kvmesh.graph.graph import CommGraph
from kvmesh.graph.summary import missing_edges, summary_graph, summary_options


def designed_picture(
    agents: Sequence[str], graph: CommGraph, chosen: Sequence[CommGraph], per_task: bool = True
) -> tuple[CommGraph, dict]:
    """(the graph to draw, drawing options) for what a designer `chose` against the team's `graph`: the majority
    graph of per-task graphs over `agents` (a fixed-graph designer's one graph when not `per_task`), the team's
    edges it lacks dotted, agents run in fewer than half the tasks faint, laid out as `graph`."""
    if per_task:
        shown, kept = summary_graph(agents, chosen)
    else:  # one graph: draw it with its edge probabilities as weights
        shown, kept = chosen[0], dict.fromkeys(agents, 1.0)
    return shown, {"pruned": missing_edges(graph.edges(), shown), "layout": graph, **summary_options(kept)}


def write_design_pictures(
    folder: str | Path,
    agents: Sequence[str],
    graph: CommGraph,
    candidates: Sequence[Edge],
    chosen: Sequence[CommGraph],
    designer: str,
    per_task: bool,
    example: object = None,
    channels: Sequence[str] = (),
    **options,
) -> list[Path]:
    """before/after (and, given the `example` task's id, one task's graph) as PNG and Mermaid under `folder`.

    `agents` and `graph`: the team's; `candidates`: every edge the designer could choose; `chosen`: the graphs it
    chose, one per task (the example's first); `designer`: its kind, for titles; `channels`: the channels it
    chooses among (each keeps one colour across the pictures); `options`: the team's drawing options
    (`Team.picture_options`: decision and roles)."""
    folder = Path(folder)
    options = {**options, "channels": channels}
    written = []
    before = {"pruned": missing_edges(candidates, graph), "faint_label": "candidate"}
    before_title = f"before: {len(candidates)} candidate edges; solid: the team's graph ({len(graph.edges())})"
    for suffix in (".png", ".mmd"):
        written.append(write_picture(graph, folder / f"before{suffix}", title=before_title, **options, **before))
    after, extra = designed_picture(agents, graph, chosen, per_task)
    where = f"{len(chosen)} tasks" if per_task else "every task"
    for suffix in (".png", ".mmd"):
        title = f"after: {designer}, {where}"
        written.append(write_picture(after, folder / f"after{suffix}", title=title, **options, **extra))
    if per_task and example is not None:
        first = chosen[0]
        shown = CommGraph(list(agents), first.edges())
        missing = [a for a in agents if a not in first.agents]
        extra = {"pruned": missing_edges(graph.edges(), first), "pruned_agents": missing, "layout": graph}
        title = f"{designer} on task {example}"
        written.append(write_picture(shown, folder / "example.png", title=title, **options, **extra))
    return written
