"""The majority graph of per-task graphs keeps each edge's channel: the one most of the graphs holding it use."""

from kvmesh import CommGraph
from kvmesh.graph.edge import Edge
from kvmesh.graph.summary import summary_graph

AGENTS = ["a", "b", "c"]


def test_each_majority_edge_is_drawn_on_the_channel_most_of_its_graphs_give_it():
    graphs = [
        CommGraph(AGENTS, [Edge("a", "b", channel="kv-select@100"), Edge("b", "c")]),
        CommGraph(AGENTS, [Edge("a", "b", channel="kv-select@100"), Edge("b", "c", channel="kv-select@30")]),
        CommGraph(AGENTS, [Edge("a", "b"), Edge("b", "c")]),
        CommGraph(AGENTS, [Edge("a", "c", channel="kv-select@30")]),
    ]
    shown, kept = summary_graph(AGENTS, graphs)
    on = {(e.source, e.target): (e.channel, e.weight) for e in shown.edges()}
    assert on == {("a", "b"): ("kv-select@100", 0.75), ("b", "c"): ("text", 0.75)}  # a->c: in one graph of four
    assert kept == {"a": 1.0, "b": 1.0, "c": 1.0}
