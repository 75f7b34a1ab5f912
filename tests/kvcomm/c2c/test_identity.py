"""A correctness anchor for the c2c path: between two copies of one model, the identity mapper makes c2c read
exactly what kv-select reads at every layer (the sender's prompt cache in front of the receiver's prompt)."""

import pytest
import torch

from kvmesh import Agent, CommGraph, Task, Team, load_model
from kvmesh.graph import Edge
from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig, save_mapper
from kvmesh.kvcomm.c2c.mappers.quality import mapping_quality
from kvmesh.kvcomm.c2c.mappers.ridge import RidgeMapper
from kvmesh.llm.registry import resolve

TASKS = [
    Task(f"Where is the {colour} key?", id=colour, shards={"a": f"The {colour} key is in the {room}. Bo has a cat."})
    for colour, room in (("blue", "attic"), ("red", "kitchen"), ("green", "garden shed"))
]
PROBES = [(f"The {c} key is in the {r}.", " Where is it?") for c, r in (("tan", "hall"), ("gray", "cellar"))]


def identity(sender, receiver, folder):
    """The identity map between two copies of one model, its quality measured as the channel asks."""
    geometry = KVGeometry.of(sender)
    config = MapperConfig("ridge", sender.spec, receiver.spec, geometry, KVGeometry.of(receiver))
    eye, zero = torch.eye(geometry.width).repeat(geometry.layers, 1, 1), torch.zeros(geometry.layers, geometry.width)
    mapper = RidgeMapper(config, eye, zero, eye.clone(), zero.clone())
    mapper.config.quality = mapping_quality(mapper, sender, receiver, PROBES).to_dict()
    return save_mapper(mapper, folder)


def replies(sender, receiver, channel, settings):
    agents = [Agent("a", model=sender, max_new_tokens=6), Agent("b", model=receiver, max_new_tokens=10)]
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel=channel)])
    team = Team(agents, graph, decision="last", channels={channel: settings})
    return [result.messages[1].content for result in team.run_batch(TASKS)]


def check(alias, tmp_path):
    sender, receiver = load_model(str(resolve(alias))), load_model(alias)  # two copies, loaded apart
    assert sender is not receiver
    folder = identity(sender, receiver, tmp_path / "identity")
    c2c = replies(sender, receiver, "c2c", {"mapper": str(folder)})  # the default quality gate passes it
    kv_select = replies(sender, receiver, "kv-select", {"fraction": 1.0})
    assert c2c == kv_select
    alone = Team([Agent("b", model=receiver, max_new_tokens=10)], CommGraph(["b"]), decision="last")
    unread = [r.messages[0].content for r in alone.run_batch([Task(t.question, id=t.id) for t in TASKS])]
    assert unread != c2c  # the sender's context changes the replies: the equality above can fail


def test_identity_c2c_is_kv_select_at_every_layer_on_the_tiny_model(tiny, tmp_path):
    check("tiny-random", tmp_path)


@pytest.mark.slow
def test_identity_c2c_is_kv_select_at_every_layer_on_smollm2(smollm, tmp_path):
    check("smollm2-135m", tmp_path)
