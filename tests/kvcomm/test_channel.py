"""The channel registry: names, one error for unknown and unavailable channels everywhere, and a new channel
plugged in from outside, run by an unchanged scheduler."""

from collections.abc import Hashable

import pytest

from kvmesh import Agent, ChannelNotAvailableError, CommGraph, Edge, GraphError, Task, Team
from kvmesh.evals.runner import EvalConfig
from kvmesh.kvcomm import channel
from kvmesh.kvcomm.assembly import OWN, Piece
from kvmesh.kvcomm.channel import (
    available_channels,
    channel_names,
    check_channel,
    make_channel,
    register_channel,
)
from kvmesh.kvcomm.text import TextChannel


def test_names_and_availability():
    assert channel_names()[:4] == ("text", "kv-reuse", "kv-select", "c2c")
    assert available_channels()[:4] == ("text", "kv-reuse", "kv-select", "c2c")
    check_channel("kv-reuse", "edge a -> b")
    assert make_channel("kv-reuse", {"gamma": 0.2}).config.gamma == 0.2


@pytest.mark.parametrize(
    "build",
    [
        lambda: CommGraph(["a", "b"], [Edge("a", "b", channel="pigeon")]),  # an edge
        lambda: Team([Agent("a")], "chain", decision={"method": "decision", "channel": "pigeon"}),  # the decision
        lambda: EvalConfig("infoqa", channel="pigeon"),  # a config
        lambda: make_channel("pigeon"),
    ],
)
def test_an_unknown_channel_is_one_error_wherever_it_is_named(build):
    with pytest.raises(ChannelNotAvailableError, match="pigeon"):
        build()


def test_a_channel_not_available_yet_is_the_same_error(monkeypatch):
    monkeypatch.setattr(channel, "_REGISTRY", channel._REGISTRY.copy({"carrier": None}))  # known, not built
    for build in (
        lambda: Team([Agent("a"), Agent("b")], CommGraph(["a", "b"], [Edge("a", "b", channel="carrier")])),
        lambda: Team([Agent("a")], "chain", decision={"method": "decision", "channel": "carrier"}),
        lambda: check_channel("carrier", "EvalConfig.channel"),
    ):
        available = "which is not available yet; available: text, kv-reuse, kv-select, c2c"
        with pytest.raises(ChannelNotAvailableError, match=available):
            build()
    with pytest.raises(GraphError):  # an unknown name on an edge is also a bad graph
        CommGraph(["a", "b"], [Edge("a", "b", channel="pigeon")])


class QuotedChannel(TextChannel):
    """A channel from outside kvmesh: the receiver reads the message as quoted text."""

    name = "quoted"

    def layout(self, model, glue: str, content: str, cached, key: Hashable) -> list[Piece]:
        quoted = "\n".join(f"> {line}" for line in content.splitlines())
        return [Piece(own=True, text=glue + quoted, kind=OWN)]


def test_a_registered_channel_runs_in_a_team(tiny, monkeypatch):
    monkeypatch.setattr(channel, "_REGISTRY", channel._REGISTRY.copy())  # the registration ends with the test
    register_channel("quoted", QuotedChannel)
    agents = [Agent(n, model="tiny-random", max_new_tokens=6) for n in "ab"]
    team = Team(agents, CommGraph.preset("chain", agents).with_channel("quoted"), decision="last")
    result = team.run(Task("Q?"))
    prompt = result.messages[1].response_metadata["prompt"]
    assert f"Message from a (this round):\n> {result.messages[0].content.splitlines()[0]}" in prompt
    assert result.usage.per_edge["a->b"].input_tokens > 0
    assert isinstance(team.channels["quoted"], QuotedChannel)
