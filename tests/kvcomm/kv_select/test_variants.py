"""kv-select variants on edges (`kv-select@P`, `kv-select@P:tokens@T`, `kv-select@P+tN`): each edge of one graph
reads with its own settings, as a team whose kv-select channel has those settings reads."""

import pytest

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.agents.spec import team_from_spec, team_to_spec
from kvmesh.graph import Edge
from kvmesh.graph.edge import GraphError
from kvmesh.kvcomm.channel import ChannelNotAvailableError

TASK = Task("Where is the blue key?", id="t", shards={"a": "The blue key is in the attic. The red one is lost."})
TRIO = Task("Where is the blue key?", id="t3", shards={"a": "The blue key is in the attic.", "c": "Keys are blue."})


def agents(*names: str, tokens: int = 8) -> list[Agent]:
    return [Agent(name, model="tiny-random", max_new_tokens=tokens) for name in names]


def pair(channel: str, **settings) -> Team:
    """a -> b over `channel`, with the team's kv-select settings `settings`."""
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel=channel)])
    return Team(agents("a", "b"), graph, decision="last", channels={"kv-select": settings} if settings else None)


@pytest.mark.parametrize(
    ("variant", "settings"),
    [
        ("kv-select@100", {"fraction": 1.0}),
        ("kv-select@50", {"fraction": 0.5}),
        ("kv-select@100:tokens@50", {"fraction": 1.0, "token_fraction": 0.5}),
        ("kv-select@100+t3", {"fraction": 1.0, "thoughts": 3}),
    ],
)
def test_a_variant_reads_as_kv_select_with_the_settings_its_name_gives(tiny, variant, settings):
    named = pair(variant).run(TASK).messages[1]
    configured = pair("kv-select", **settings).run(TASK).messages[1]
    assert named.content == configured.content
    assert named.usage_metadata == configured.usage_metadata  # the same positions read, thoughts included


def test_a_variant_changes_what_is_read(tiny):
    everything = pair("kv-select@100").run(TASK).messages[1].usage_metadata
    thinking = pair("kv-select@100+t4").run(TASK).messages[1].usage_metadata
    assert thinking["input_token_details"]["cache_read"] == everything["input_token_details"]["cache_read"] + 4


def test_a_label_fixes_layers_tokens_and_thoughts_and_the_rest_comes_from_the_team_or_its_own_settings(tiny):
    team = pair("kv-select@50", thoughts=2, token_fraction=0.5, centre=0.4)
    chosen = team.channels["kv-select@50"].config
    # the name means the same in every team: 50% of the layers, every token, no thoughts; how layers are chosen
    # (the prior's centre) is the team's
    assert (chosen.fraction, chosen.token_fraction, chosen.thoughts, chosen.centre) == (0.5, 1.0, 0, 0.4)
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select@50")])
    own = Team(agents("a", "b"), graph, decision="last", channels={"kv-select@50": {"thoughts": 3}})
    mine = own.channels["kv-select@50"].config
    assert (mine.fraction, mine.thoughts) == (0.5, 3)  # its own fields on top of what the label derives
    with pytest.raises(ValueError, match="unknown kv-select@50 settings"):
        Team(agents("a", "b"), graph, decision="last", channels={"kv-select@50": {"depth": 3}})


def test_a_reader_passes_on_its_own_prompt_whatever_variant_it_read_over(tiny):
    """a -> b over kv-select@50, b -> c over kv-select@100: c reads b's own prompt cache, without a's context
    (which b read over the other variant), exactly as when both edges are one variant."""
    three = Task("Where is the key?", id="k", shards={"a": "The key is in the attic."})

    def read_by_c(first: str) -> dict:
        edges = [Edge("a", "b", channel=first), Edge("b", "c", channel="kv-select@100")]
        result = Team(agents("a", "b", "c"), CommGraph(["a", "b", "c"], edges), decision="last").run(three)
        return next(m for m in result.messages if m.name == "c").usage_metadata

    mixed, same = read_by_c("kv-select@50"), read_by_c("kv-select@100")
    assert mixed["input_token_details"]["cache_read"] == same["input_token_details"]["cache_read"]
    assert mixed["input_tokens"] == same["input_tokens"]


def test_one_sender_read_over_two_variants_gives_each_receiver_its_own_read(tiny):
    # a is read by b over kv-select@100 and by c over kv-select@100+t3: a's row runs three thoughts once, and b
    # must read a's prompt without them, as b does in a team where nobody asks a for thoughts
    graph = CommGraph(
        ["a", "b", "c"], [Edge("a", "b", channel="kv-select@100"), Edge("a", "c", channel="kv-select@100+t3")]
    )
    mixed = Team(agents("a", "b", "c"), graph, decision="majority").run(TRIO)
    alone = {}
    for channel, reader in (("kv-select@100", "b"), ("kv-select@100+t3", "c")):
        lone = CommGraph(["a", "b", "c"], [Edge("a", reader, channel=channel)])
        result = Team(agents("a", "b", "c"), lone, decision="majority").run(TRIO)
        alone[reader] = next(m for m in result.messages if m.name == reader)
    for reader in ("b", "c"):
        message = next(m for m in mixed.messages if m.name == reader)
        assert message.content == alone[reader].content
        assert message.usage_metadata == alone[reader].usage_metadata
    assert mixed.usage.per_agent["a"].latent_steps == 3
    stats = Team(agents("a", "b", "c"), graph, decision="majority")
    stats.run(TRIO)
    assert set(stats.channel_stats()) >= {"kv-select@100", "kv-select@100+t3"}  # each variant its own counts


def test_an_agent_reading_caches_over_two_variants_is_refused_when_the_team_is_built():
    graph = CommGraph(
        ["a", "b", "c"], [Edge("a", "c", channel="kv-select@30"), Edge("b", "c", channel="kv-select@100")]
    )
    with pytest.raises(GraphError, match="agent c reads caches over kv-select@100 and kv-select@30"):
        Team(agents("a", "b", "c"), graph, decision="last")
    text_beside = CommGraph(["a", "b", "c"], [Edge("a", "c", channel="kv-select@30"), Edge("b", "c", channel="text")])
    Team(agents("a", "b", "c"), text_beside, decision="last")  # text edges may join a cache channel


@pytest.mark.parametrize(
    ("channel", "problem"),
    [
        ("text@30", "channel 'text' has no variants"),
        ("kv-select@abc", "not a kv-select variant; name one kv-select@P"),
        ("kv-select@0", "1 to 100% of the layers"),
        ("kv-select@50:tokens@150", "1 to 100% of the context tokens"),
        ("nothing@30", r"must be one of \('text', 'kv-reuse', 'kv-select', 'c2c'\)"),
    ],
)
def test_a_variant_that_names_nothing_is_refused_saying_what_exists(channel, problem):
    with pytest.raises(ChannelNotAvailableError, match=problem):
        pair(channel)


def test_a_variant_of_fixed_layers_is_refused():
    with pytest.raises(ChannelNotAvailableError, match="fix its layers"):
        pair("kv-select@30", layers=(1,))


def test_a_team_with_variants_saves_and_loads_as_the_same_team(tiny, tmp_path):
    graph = CommGraph(["a", "b", "c"], [Edge("a", "b", channel="kv-select@50+t2"), Edge("b", "c", channel="text")])
    team = Team(agents("a", "b", "c"), graph, decision="last")
    loaded = team_from_spec(Team, team_to_spec(team))
    assert loaded.graph.edges()[0].channel == "kv-select@50+t2"
    assert loaded.channels["kv-select@50+t2"].config == team.channels["kv-select@50+t2"].config
    assert loaded.run(TRIO).messages[-1].content == team.run(TRIO).messages[-1].content
