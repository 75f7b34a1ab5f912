"""c2c edges: a receiver reads a sender on another model through the sender's cache, mapped into its format.

The sender is a tiny random Gemma 3 (sliding windows of 8 positions, layer 3 full attention), the receiver the
tiny random Llama; they share SmolLM2's tokenizer only to keep the fit small (the channel never uses that).
"""

import pytest
import torch

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.graph import Edge
from kvmesh.kvcomm.capture import ContextTooLongError, position_free_kv
from kvmesh.kvcomm.channel import ChannelNotAvailableError
from kvmesh.kvcomm.layer_rope import LayerRope
from kvmesh.kvcomm.mapper import CachePair, KVGeometry, MapperConfig, fit_ridge, load_mapper, save_mapper
from kvmesh.kvcomm.quality import MapperQualityError, mapping_quality
from kvmesh.llm.base import GenerationRequest

TASK = Task("Where is the blue key?", id="t", shards={"a": "The blue key is in the attic. The red one is lost."})
TEXTS = [f"Key {i} lies in room {i * 3}. The {c} box is empty." for i, c in enumerate(["red", "tan", "blue", "gray"])]


def fit(sender, receiver, folder, full_attention_only=True, quality=True):
    """A ridge mapper fitted on the caches both models make of the same texts, with its quality recorded."""
    geometry = KVGeometry.of(sender), KVGeometry.of(receiver)
    config = MapperConfig("ridge", sender.spec, receiver.spec, *geometry, full_attention_only=full_attention_only)
    pairs = []
    for text in TEXTS:
        ids = receiver.tokenizer(text)["input_ids"][:7]  # within the sender's sliding window, for every layer
        pairs.append(CachePair(*position_free_kv(sender, ids), *position_free_kv(receiver, ids)))
    mapper = fit_ridge(pairs, config)
    if quality:
        mapper.config.quality = mapping_quality(
            mapper, sender, receiver, [(t[:12], " Where?") for t in TEXTS]
        ).to_dict()
    return save_mapper(mapper, folder)


def pair(sender, folder, threshold=-1.0, **options):
    agents = [Agent("a", model=sender, max_new_tokens=6, **options), Agent("b", model="tiny-random", max_new_tokens=8)]
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="c2c")])
    return Team(agents, graph, decision="last", channels={"c2c": {"mapper": str(folder), "threshold": threshold}})


def test_the_receiver_reads_the_mapped_sender_prompt(tiny, sliding, tmp_path):
    folder = fit(sliding, tiny, tmp_path / "ridge")
    result = pair(sliding, folder).run(TASK)
    sender, receiver = result.messages
    assert sender.content == "" and sender.usage_metadata["output_tokens"] == 0  # read only as a cache: silent
    context = sliding.encode_prompt(sender.response_metadata["prompt"])
    own = tiny.encode_prompt(receiver.response_metadata["prompt"])
    usage = receiver.usage_metadata
    assert usage["input_tokens"] == len(context) + len(own)
    assert usage["input_token_details"]["cache_read"] == len(context)
    # the same reply as mapping by hand: strip Gemma's rotation, map, rotate for the Llama, prefill after it
    (kept,) = sliding.generate_requests([GenerationRequest(context, max_new_tokens=0, keep_kv=True)])
    mapper, positions = load_mapper(folder), torch.arange(len(context))
    keys = LayerRope.from_model(sliding.model).strip(kept.prompt_kv.keys.float(), positions)
    keys, values = mapper.transfer(keys, kept.prompt_kv.values.float())
    keys = LayerRope.from_model(tiny.model).apply(keys, positions)
    from kvmesh.kvcomm.assembly import Assembly
    from kvmesh.llm.segment import KVSegment

    prefix = Assembly.of(KVSegment(keys, values, 0, tuple(context)), own)
    (by_hand,) = tiny.generate_requests([GenerationRequest(context + own, max_new_tokens=8, prefix=prefix)])
    assert receiver.content == by_hand.text.strip()
    per_position = 2 * tiny.model.config.num_key_value_heads * tiny.model.config.head_dim * 4
    layers = tiny.model.config.num_hidden_layers
    assert result.usage.per_edge["a->b"].kv_bytes == layers * len(context) * per_position


def test_batched_equals_alone(tiny, sliding, tmp_path):
    team = pair(sliding, fit(sliding, tiny, tmp_path / "ridge"))
    tasks = [Task(f"Where is key {i}?", id=str(i), shards={"a": f"Key {i} is in room {i * 11}."}) for i in range(3)]
    for task, result in zip(tasks, team.run_batch(tasks), strict=True):
        assert [m.content for m in result.messages] == [m.content for m in team.run(task).messages]


def test_mapper_problems_are_clear_errors(tiny, sliding, tmp_path):
    with pytest.raises(ChannelNotAvailableError, match="needs a mapper"):
        Team(
            [Agent("a", model=sliding), Agent("b", model="tiny-random")],
            CommGraph(["a", "b"], [Edge("a", "b", channel="c2c")]),
            decision="last",
        )
    with pytest.raises(Exception, match="missing"):
        pair(sliding, tmp_path / "missing")
    unchecked = fit(sliding, tiny, tmp_path / "unchecked", quality=False)
    with pytest.raises(MapperQualityError, match="no held-out quality check"):
        pair(sliding, unchecked)
    checked = fit(sliding, tiny, tmp_path / "ridge")
    with pytest.raises(MapperQualityError, match=r"threshold 1\.010"):
        pair(sliding, checked, threshold=1.01)
    with pytest.raises(ChannelNotAvailableError, match="c2c edge a -> b"):
        pair(tiny, checked)  # fitted for another sender
    sliding_layers = fit(sliding, tiny, tmp_path / "sliding", full_attention_only=False)
    with pytest.raises(ContextTooLongError, match="sliding-window layers"):
        pair(sliding, sliding_layers).run(TASK)  # the sender's prompt is longer than its 8-position window


def test_one_team_mixes_every_channel(tiny, sliding, tmp_path):
    folder = fit(sliding, tiny, tmp_path / "ridge")
    agents = [Agent("a", model=sliding, max_new_tokens=4)] + [
        Agent(n, model="tiny-random", max_new_tokens=4) for n in "bcde"
    ]
    edges = [
        Edge("a", "b", channel="c2c"),
        Edge("b", "c", channel="kv-select"),
        Edge("c", "d", channel="kv-reuse"),
        Edge("d", "e", channel="text"),
    ]
    team = Team(
        agents,
        CommGraph(list("abcde"), edges),
        decision="last",
        channels={"c2c": {"mapper": str(folder), "threshold": -1.0}},
    )
    events = list(team.stream(TASK))
    sent = {(e.source, e.target): e.channel for e in events if type(e).__name__ == "MessageSent"}
    assert sent == {("a", "b"): "c2c", ("b", "c"): "kv-select", ("c", "d"): "kv-reuse", ("d", "e"): "text"}
    result = next(e for e in events if type(e).__name__ == "TeamFinished").result
    assert result.usage.per_edge["a->b"].kv_bytes > 0 and result.usage.per_edge["d->e"].kv_bytes == 0
    assert set(team.channel_stats()) >= {"c2c", "kv-select"}
