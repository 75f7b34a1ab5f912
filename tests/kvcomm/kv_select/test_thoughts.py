"""kv-select with latent thoughts: the sender thinks N steps after its prompt and the receiver reads them too."""

import pytest

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.graph import Edge

TASK = Task("Where is the blue key?", id="t", shards={"a": "The blue key is in the attic. The red one is lost."})


def pair(model="tiny-random", **settings):
    agents = [Agent("a", model=model, max_new_tokens=6), Agent("b", model=model, max_new_tokens=10)]
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select")])
    return Team(agents, graph, decision="last", channels={"kv-select": {"fraction": 1.0, **settings}})


def test_the_receiver_reads_the_senders_thoughts_as_a_plain_loop_would(tiny, latent_loop):
    result = pair(thoughts=3).run(TASK)
    sender, receiver = result.messages
    context = tiny.encode_prompt(sender.response_metadata["prompt"])
    own = tiny.encode_prompt(receiver.response_metadata["prompt"])
    _, _, generated = latent_loop(tiny, context, 3, then=own, tokens=10)
    assert receiver.content == tiny.tokenizer.decode(generated, skip_special_tokens=True).strip()
    assert sender.content == "" and sender.usage_metadata["output_tokens"] == 0
    assert result.usage.per_agent["a"].latent_steps == 3
    details = receiver.usage_metadata["input_token_details"]
    assert details["cache_read"] == len(context) + 3  # the thought positions are read, and counted
    assert receiver.usage_metadata["input_tokens"] == len(context) + 3 + len(own)


def test_thoughts_change_what_the_receiver_reads(tiny):
    without, with_thoughts = (pair(thoughts=n) for n in (0, 4))
    plain = without.run(TASK).messages[1]
    thinking = with_thoughts.run(TASK).messages[1]
    assert thinking.usage_metadata["input_token_details"]["cache_read"] == (
        plain.usage_metadata["input_token_details"]["cache_read"] + 4
    )
    assert with_thoughts.channel_stats()["kv-select"]["kv_bytes"] > without.channel_stats()["kv-select"]["kv_bytes"]


def test_a_batch_with_thoughts_answers_as_each_task_alone(tiny):
    tasks = [
        Task(f"Where is the {colour} key?", id=colour, shards={"a": f"The {colour} key is in the {room}."})
        for colour, room in (("blue", "attic"), ("red", "kitchen"), ("green", "garden shed"))
    ]
    team = pair(thoughts=2)
    batched = [r.messages[1].content for r in team.run_batch(tasks)]
    assert batched == [team.run(task).messages[1].content for task in tasks]


def test_bad_thoughts_are_refused():
    with pytest.raises(ValueError, match="thoughts must be an integer >= 0"):
        pair(thoughts=-2)
