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

from collections.abc import Sequence
from pathlib import Path

from kvmesh.agents.task import Task
from kvmesh.graph.draw import write_picture
from kvmesh.graph.graph import CommGraph
from kvmesh.graph.summary import missing_edges, summary_graph, summary_options
from kvmesh.topology.designer import Designer


def write_design_pictures(designer: Designer, tasks: Sequence[Task], folder: str | Path) -> list[Path]:
    """before/after (and for per-task designers an example task) as PNG and Mermaid under `folder`."""
    folder = Path(folder)
    team = designer.team
    options = team.picture_options()
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
