import networkx as nx
import pytest

from kvmesh import Agent, CommGraph, GraphError
from kvmesh.graph import Edge
from kvmesh.graph.presets import PRESETS

NAMES = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(
    ("preset", "options", "expected"),
    [
        ("chain", {}, {("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")}),
        ("star", {}, {("a", "b"), ("a", "c"), ("a", "d"), ("a", "e")}),
        ("star", {"hub": "c", "direction": "in"}, {("a", "c"), ("b", "c"), ("d", "c"), ("e", "c")}),
        ("tree", {}, {("a", "b"), ("a", "c"), ("b", "d"), ("b", "e")}),
        ("tree", {"branching": 3}, {("a", "b"), ("a", "c"), ("a", "d"), ("b", "e")}),
        ("complete", {}, {(u, v) for i, u in enumerate(NAMES) for v in NAMES[i + 1 :]}),
        ("layered", {"layers": [2, 3]}, {(u, v) for u in "ab" for v in "cde"}),
        ("layered", {"layers": 3}, {("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "e"), ("d", "e")}),
        ("debate", {}, set()),
    ],
)
def test_preset_spatial_edges(preset, options, expected):
    assert CommGraph.preset(preset, NAMES, **options).edge_set("spatial") == expected


def test_debate_and_temporal_options():
    debate = CommGraph.preset("debate", NAMES)
    assert debate.edge_set("temporal") == {(u, v) for u in NAMES for v in NAMES}
    chain = CommGraph.preset("chain", NAMES, temporal="self")
    assert chain.edge_set("temporal") == {(n, n) for n in NAMES}
    assert CommGraph.preset("chain", NAMES).edge_set("temporal") == set()


def test_random_preset_is_seeded_and_acyclic():
    graphs = [CommGraph.preset("random", NAMES, p=0.5, seed=s) for s in range(20)]
    assert CommGraph.preset("random", NAMES, seed=3) == CommGraph.preset("random", NAMES, seed=3)
    assert len({frozenset(g.edge_set()) for g in graphs}) > 10
    assert all(nx.is_directed_acyclic_graph(g.spatial) for g in graphs)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_a_dag_and_accepts_agents(preset):
    agents = [Agent(n, model="tiny-random") for n in NAMES]
    graph = CommGraph.preset(preset, agents)
    assert graph.agents == NAMES and nx.is_directed_acyclic_graph(graph.spatial)


def test_cycle_error_names_the_cycle():
    with pytest.raises(GraphError, match=r"cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"):
        CommGraph(["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "a")])
    with pytest.raises(GraphError, match="cycle: a -> a"):
        CommGraph(["a"], [("a", "a")])
    CommGraph(["a", "b"], [("a", "b"), ("b", "a", "temporal"), ("a", "a", "temporal")])  # temporal cycles are fine


def test_invalid_graphs_have_clear_errors():
    with pytest.raises(GraphError, match="unknown agent 'z'"):
        CommGraph(["a", "b"], [("a", "z")])
    with pytest.raises(GraphError, match="channel must be one of"):
        CommGraph(["a", "b"], [Edge("a", "b", channel="carrier-pigeon")])
    with pytest.raises(GraphError, match="kind must be one of"):
        CommGraph(["a", "b"], [("a", "b", "sideways")])
    with pytest.raises(GraphError, match="at least one agent"):
        CommGraph([])
    with pytest.raises(GraphError, match="repeated: a"):
        CommGraph(["a", "a"])
    with pytest.raises(GraphError, match="unknown topology 'ring'"):
        CommGraph.preset("ring", NAMES)
    with pytest.raises(GraphError, match="topology 'chain' has no option 'fanout'; its options: none"):
        CommGraph.preset("chain", NAMES, fanout=2)
    with pytest.raises(GraphError, match="topology 'star' has no option 'hubb'; its options: hub, direction"):
        CommGraph.preset("star", NAMES, hubb=1)
    with pytest.raises(GraphError, match="hub index 7 is out of range for 5 agents"):
        CommGraph.preset("star", NAMES, hub=7)
    with pytest.raises(GraphError, match=r"unknown: \['colour'\]"):
        CommGraph(["a", "b"], [{"source": "a", "target": "b", "colour": "red"}])
    with pytest.raises(GraphError, match="needs 'source' and 'target'"):
        CommGraph(["a", "b"], [{"source": "a"}])
    with pytest.raises(GraphError, match="list of names, got the string 'abc'"):
        CommGraph.from_dict({"agents": "abc"})
    graph = CommGraph(["a", "b"], [("a", "b")])
    with pytest.raises(GraphError, match="cycle"):
        graph.add_edge(("b", "a"))


def test_json_round_trip_keeps_kinds_channels_and_weights():
    graph = CommGraph(
        ["a", "b", "c"],
        [Edge("a", "b", weight=0.7), Edge("b", "c", channel="kv-reuse"), Edge("c", "a", "temporal")],
    )
    again = CommGraph.from_json(graph.to_json())
    assert again == graph
    assert again.edges("spatial")[0].weight == 0.7
    assert again.channel("b", "c") == "kv-reuse"
    with pytest.raises(GraphError, match="does not parse"):
        CommGraph.from_json("{not json")


def test_from_networkx_and_levels():
    g = nx.DiGraph()
    g.add_edge("x", "y")
    g.add_edge("x", "z", channel="text", weight=0.5)
    g.add_edge("z", "x", kind="temporal")
    graph = CommGraph.from_networkx(g)
    assert graph.edge_set("spatial") == {("x", "y"), ("x", "z")}
    assert graph.edge_set("temporal") == {("z", "x")}
    assert graph.levels() == [["x"], ["y", "z"]]
    assert CommGraph.preset("complete", NAMES).levels() == [[n] for n in NAMES]
    assert CommGraph.preset("debate", NAMES).levels() == [NAMES]


def test_multi_round_presets_read_the_previous_round_unless_told_otherwise():
    one, two = CommGraph.preset("chain", NAMES), CommGraph.preset("chain", NAMES, rounds=2)
    assert one.edges("temporal") == []
    assert two.edge_set("temporal") == {(u, v) for u in NAMES for v in NAMES}  # every agent reads the last round
    assert CommGraph.preset("chain", NAMES, rounds=2, temporal="self").edge_set("temporal") == {(n, n) for n in NAMES}
    assert CommGraph.preset("chain", NAMES, rounds=2, temporal="none").edges("temporal") == []
    with pytest.raises(GraphError, match="temporal must be one of none, self, complete, got 'all'"):
        CommGraph.preset("chain", NAMES, temporal="all")


def test_agent_names_that_would_merge_edge_keys_are_refused():
    with pytest.raises(GraphError, match="'a->b' contains '->', which edge keys use"):
        CommGraph(["a->b", "c"])
    with pytest.raises(GraphError, match="ends like the '\\(temporal\\)' of edge keys"):
        CommGraph(["a", "b (temporal)"])
    with pytest.raises(GraphError, match="'a->b' contains '->'"):
        Agent("a->b")
    assert CommGraph(["a-b", "a_b", "x (y)"]).agents == ["a-b", "a_b", "x (y)"]
