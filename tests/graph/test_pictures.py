"""A designer's pictures from plain data (no designer, no model): the before picture holds every candidate, the
after picture what most tasks kept, with the team's dropped edges dotted and a rarely run agent faint."""

import matplotlib.image

from kvmesh import CommGraph
from kvmesh.graph import Edge
from kvmesh.graph.pictures import designed_picture, write_design_pictures

AGENTS = ["a", "b", "c"]
TEAM = CommGraph(AGENTS, [Edge("a", "b"), Edge("b", "c")])
CANDIDATES = [Edge(s, t) for s in AGENTS for t in AGENTS if s != t]
# three tasks: a->b kept in all, b->c in one, c left out of two
CHOSEN = [
    CommGraph(["a", "b"], [Edge("a", "b")]),
    CommGraph(["a", "b"], [Edge("a", "b")]),
    CommGraph(AGENTS, [Edge("a", "b"), Edge("b", "c")]),
]


def test_the_after_picture_is_what_most_tasks_kept_against_the_teams_graph():
    graph, options = designed_picture(AGENTS, TEAM, CHOSEN)
    assert [(e.source, e.target, e.weight) for e in graph.edges()] == [("a", "b", 1.0)]
    assert [(e.source, e.target) for e in options["pruned"]] == [("b", "c")]
    assert options["pruned_agents"] == ["c"] and options["notes"]["c"] == "runs in 33%"
    assert options["layout"] is TEAM


def test_a_fixed_graph_designer_is_drawn_as_its_one_graph():
    fixed = CommGraph(AGENTS, [Edge("a", "c", weight=0.8)])
    graph, options = designed_picture(AGENTS, TEAM, [fixed], per_task=False)
    assert graph is fixed and options["pruned_agents"] == [] and options["notes"] is None
    assert {(e.source, e.target) for e in options["pruned"]} == {("a", "b"), ("b", "c")}


def test_before_after_and_example_pictures_are_written(tmp_path):
    written = write_design_pictures(
        tmp_path, AGENTS, TEAM, CANDIDATES, CHOSEN, "gdesigner", True, example="t0", decision="judge"
    )
    assert [p.name for p in written] == ["before.png", "before.mmd", "after.png", "after.mmd", "example.png"]
    before = (tmp_path / "before.mmd").read_text()
    assert before.count(" -. candidate .- ") == len(CANDIDATES) - len(TEAM.edges())
    assert "    n_c -. candidate .- n_b" in before.splitlines()
    after = (tmp_path / "after.mmd").read_text()
    assert "    n_b -. pruned .- n_c" in after.splitlines() and "runs in 33%" in after
    assert all(matplotlib.image.imread(p).ndim == 3 for p in written if p.suffix == ".png")


def test_no_example_picture_without_an_example_or_for_a_fixed_graph(tmp_path):
    assert not any(
        p.name == "example.png" for p in write_design_pictures(tmp_path, AGENTS, TEAM, CANDIDATES, CHOSEN, "x", True)
    )
    fixed = write_design_pictures(tmp_path / "f", AGENTS, TEAM, CANDIDATES, CHOSEN[:1], "x", False, example="t0")
    assert [p.name for p in fixed] == ["before.png", "before.mmd", "after.png", "after.mmd"]
