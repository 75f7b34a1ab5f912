"""Per-task graphs: each task of a batch runs on its own graph, and an agent left out of it makes no call."""

import pytest

from kvmesh import Agent, CommGraph, GraphError, Task, Team
from kvmesh.graph import Edge
from kvmesh.kvcomm.channel import ChannelNotAvailableError


def make_agents(names, max_new_tokens=4):
    return [Agent(n, role=f"{n} role", model="tiny-random", max_new_tokens=max_new_tokens) for n in names]


class FixedDesigner:
    """Chooses a graph by the task's id: the smallest thing with `design_batch`, `seen_ids` and `channels`."""

    def __init__(self, graphs, channels=()):
        self.graphs = graphs
        self.seen_ids = []
        self.channels = list(channels)

    def design_batch(self, tasks):
        return [self.graphs[task.id] for task in tasks]


def test_each_task_runs_on_its_own_graph_and_pruned_agents_make_no_call(tiny):
    team = Team(make_agents("abc"), "complete")
    pruned = CommGraph(["a", "c"], [("a", "c")])
    full, cut = team.run_batch([Task("Q one?", id="0"), Task("Q two?", id="1")], graphs=[team.graph, pruned])

    assert [m.name for m in full.messages] == ["a", "b", "c", "decision"]
    assert [m.name for m in cut.messages] == ["a", "c", "decision"]
    assert "b" not in cut.usage.per_agent
    assert cut.usage.total.calls == 3
    assert set(cut.usage.per_edge) == {"a->c", "a->decision (decision)", "c->decision (decision)"}
    decision_prompt = cut.messages[-1].response_metadata["prompt"]
    assert "Message from a" in decision_prompt and "Message from b" not in decision_prompt
    assert cut.graph == pruned and full.graph == team.graph
    # a pruned agent costs what it would have cost: the full run spent more on the same kind of task
    assert cut.usage.total.total_tokens < full.usage.total.total_tokens


def test_a_designer_on_the_team_chooses_each_tasks_graph(tiny):
    graphs = {"solo": CommGraph(["b"]), "pair": CommGraph(["a", "b"], [("a", "b")])}
    team = Team(make_agents("abc"), "complete", designer=FixedDesigner(graphs), decision="last")
    results = team.run_batch([Task("Q?", id="solo"), Task("Q?", id="pair")])
    assert [[m.name for m in r.messages] for r in results] == [["b"], ["a", "b"]]
    assert [r.graph for r in results] == [graphs["solo"], graphs["pair"]]
    events = list(team.stream(Task("Q?", id="solo")))
    assert {getattr(e, "agent", None) for e in events} - {None} == {"b"}


def test_a_designer_s_channels_are_set_up_by_the_team_and_its_graphs_may_use_them(tiny):
    latent = CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select@100")])
    team = Team(make_agents("ab"), "chain", designer=FixedDesigner({"t": latent}, ["kv-select@100"]), decision="last")
    assert set(team.channels) == {"text", "kv-select@100"}
    (result,) = team.run_batch([Task("Q?", id="t")])
    assert result.messages[0].content == ""  # read over kv-select only: the sender prefilled and stopped
    assert team.channel_stats()["kv-select@100"]["calls"] == 1
    without = Team(make_agents("ab"), "chain", designer=FixedDesigner({"t": latent}), decision="last")
    with pytest.raises(GraphError, match="designer whose channels name them"):
        without.run_batch([Task("Q?", id="t")])
    with pytest.raises(ChannelNotAvailableError, match=r"FixedDesigner\.channels"):
        Team(make_agents("ab"), "chain", designer=FixedDesigner({}, ["text@5"]))


def test_majority_votes_only_over_the_agents_that_ran(tiny):
    team = Team(make_agents("abc"), "complete", decision="majority")
    (result,) = team.run_batch([Task("Q?")], graphs=[CommGraph(["c"])])
    assert result.answer == result.messages[0].content and result.messages[0].name == "c"


@pytest.mark.parametrize(
    ("graph", "error", "message"),
    [
        (CommGraph(["a", "z"]), GraphError, r"agents the team does not have: \['z'\]"),
        (CommGraph(["a", "b"], [("a", "b", "spatial", "kv-reuse")]), GraphError, "team's own graph has none"),
        (CommGraph(["a", "b"], [("a", "b", "spatial", "c2c")]), GraphError, "c2c.*team's own graph has none"),
        ("chain", TypeError, "must be a CommGraph"),
    ],
)
def test_bad_task_graphs_are_refused_before_any_call(graph, error, message):
    team = Team(make_agents("abc"), "complete")
    with pytest.raises(error, match=message):
        team.run_batch([Task("Q?")], graphs=[graph])


def test_one_graph_per_task():
    team = Team(make_agents("ab"), "chain")
    with pytest.raises(ValueError, match="2 graphs for 1 tasks"):
        team.run_batch(["Q?"], graphs=[team.graph, team.graph])
    with pytest.raises(TypeError, match="design_batch"):
        Team(make_agents("ab"), "chain", designer=object())

    class Unaccountable:  # designs graphs but cannot say which tasks it learned from, so could be scored on them
        def design_batch(self, tasks):
            return [CommGraph(["a"]) for _ in tasks]

    with pytest.raises(TypeError, match="seen_ids"):
        Team(make_agents("ab"), "chain", designer=Unaccountable())


def test_with_graph_keeps_agents_and_settings():
    team = Team(make_agents("abc"), "complete", rounds=2, decision="majority", token_budget=500, seed=3)
    other = team.with_graph("chain")
    assert other.agents == team.agents and other.graph == CommGraph.preset("chain", list("abc"), rounds=2)
    assert (other.rounds, other.decision.method, other.token_budget, other.seed) == (2, "majority", 500, 3)
    assert other.designer is None
