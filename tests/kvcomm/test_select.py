"""kv-select edges: a receiver reads its sender's context cache in the chosen layers."""

import pytest

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.graph import Edge
from kvmesh.kvcomm.channel import ChannelNotAvailableError
from kvmesh.llm.base import GenerationRequest

TASK = Task("Where is the blue key?", id="t", shards={"a": "The blue key is in the attic. The red one is lost."})


def pair(channels=None, model="tiny-random"):
    agents = [Agent("a", model=model, max_new_tokens=6), Agent("b", model=model, max_new_tokens=10)]
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select")])
    return Team(agents, graph, decision="last", channels=channels)


def test_every_layer_reading_the_context_is_the_dense_read_of_it(tiny):
    result = pair({"kv-select": {"fraction": 1.0}}).run(TASK)
    sender, receiver = result.messages
    assert sender.content == "" and sender.usage_metadata["output_tokens"] == 0  # read only as a cache: it is silent
    context = tiny.encode_prompt(sender.response_metadata["prompt"])
    own = tiny.encode_prompt(receiver.response_metadata["prompt"])
    (dense,) = tiny.generate_requests([GenerationRequest(context + own, max_new_tokens=10)])
    assert receiver.content == dense.text.strip()  # replies are recorded stripped
    usage = receiver.usage_metadata
    assert usage["input_tokens"] == len(context) + len(own)
    assert usage["input_token_details"]["cache_read"] == len(context)
    assert result.usage.per_edge["a->b"].cache_read == len(context)


def test_fewer_layers_read_less_and_the_layers_are_reported(tiny):
    team = pair({"kv-select": {"layers": (1,)}})
    result = team.run(TASK)
    stats = team.channel_stats()["kv-select"]
    assert stats["layers"] == {"tiny-random": [1]} and stats["calls"] == 1
    full = pair({"kv-select": {"fraction": 1.0}})
    full.run(TASK)
    assert stats["kv_bytes"] < full.channel_stats()["kv-select"]["kv_bytes"]
    assert result.messages[1].usage_metadata["input_token_details"]["cache_read"] > 0


def test_different_models_are_refused_naming_both():
    with pytest.raises(ChannelNotAvailableError, match=r"different models \(tiny-random and smollm2-135m\)"):
        agents = [Agent("a", model="tiny-random"), Agent("b", model="smollm2-135m")]
        Team(agents, CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select")]), decision="last")


@pytest.mark.slow
def test_exact_on_smollm2_for_a_batch_of_tasks(smollm):
    tasks = [
        Task(f"Where is the {colour} key?", id=colour, shards={"a": f"The {colour} key is in the {room}."})
        for colour, room in (("blue", "attic"), ("red", "kitchen"), ("green", "garden shed"))
    ]
    results = pair({"kv-select": {"fraction": 1.0}}, model="smollm2-135m").run_batch(tasks)
    for result in results:
        sender, receiver = result.messages
        ids = smollm.encode_prompt(sender.response_metadata["prompt"] + receiver.response_metadata["prompt"])
        (dense,) = smollm.generate_requests([GenerationRequest(ids, max_new_tokens=10)])
        assert receiver.content == dense.text.strip()


def test_a_sender_whose_text_someone_reads_still_speaks(tiny):
    agents = [Agent(n, model="tiny-random", max_new_tokens=4) for n in "abc"]
    edges = [Edge("a", "b", channel="kv-select"), Edge("a", "c")]  # c reads a's reply as text
    result = Team(agents, CommGraph(list("abc"), edges), decision="last").run(TASK)
    assert result.messages[0].usage_metadata["output_tokens"] == 4
    majority = Team(agents[:2], CommGraph(["a", "b"], edges[:1]), decision="majority").run(TASK)
    assert majority.messages[0].usage_metadata["output_tokens"] == 4  # every reply is a vote
