"""c2c edges: a receiver reads a sender on another model through the sender's cache, mapped into its format.

The sender is a tiny random Gemma 3 (sliding windows of 8 positions, layer 3 full attention), the receiver the
tiny random Llama; they share SmolLM2's tokenizer only to keep the fit small (the channel never uses that).
"""

import pytest
import torch

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.agents.prompts import plan_prompt
from kvmesh.graph import Edge
from kvmesh.kvcomm.c2c.capture import ContextTooLongError, position_free_kv
from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig, load_mapper, save_mapper
from kvmesh.kvcomm.c2c.mappers.quality import MapperQualityError, mapping_quality
from kvmesh.kvcomm.c2c.mappers.ridge import CachePair, fit_ridge
from kvmesh.kvcomm.channel import ChannelNotAvailableError
from kvmesh.kvcomm.rope import LayerRope
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


def pair(sender, folder, threshold=-1.0, mode="transfer"):
    agents = [Agent("a", model=sender, max_new_tokens=6), Agent("b", model="tiny-random", max_new_tokens=8)]
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="c2c")])
    settings = {"mapper": str(folder), "threshold": threshold, "mode": mode}
    return Team(agents, graph, decision="last", channels={"c2c": settings})


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


# --- fusion over shared text ---------------------------------------------------------------------------------

FUSED = Task("Where is Mira's blue key?", id="f", shards={"a": "Mira's blue key is in the attic. Tavo's is lost."})


def _find(ids, part):
    """Where the run `part` starts in `ids` (the task inside a prompt)."""
    return next(i for i in range(len(ids) - len(part) + 1) if ids[i : i + len(part)] == part)


def fused_by_hand(sender, receiver, folder, sender_prompt, receiver_prompt, text, max_new_tokens):
    """The receiver's reply when its task rows are fused with the sender's, aligned by characters, by hand."""
    from kvmesh.kvcomm.assembly import Assembly
    from kvmesh.kvcomm.c2c.align import align_tokens
    from kvmesh.llm.segment import KVSegment

    alignment = align_tokens(text, sender.tokenizer, receiver.tokenizer, bos=False)
    mapper = load_mapper(folder)
    (kept,) = sender.generate_requests([GenerationRequest(sender_prompt, max_new_tokens=0, keep_kv=True)])
    lo = _find(sender_prompt, list(alignment.sender_ids))
    positions = torch.arange(lo, lo + len(alignment.sender_ids))
    sender_keys = LayerRope.from_model(sender.model).strip(kept.prompt_kv.keys[:, :, positions].float(), positions)
    sender_values = kept.prompt_kv.values[:, :, positions].float()
    start = _find(receiver_prompt, list(alignment.receiver_ids))
    end = start + len(alignment.receiver_ids)
    (own,) = receiver.generate_requests([GenerationRequest(receiver_prompt[:end], max_new_tokens=0, keep_kv=True)])
    rope, positions = LayerRope.from_model(receiver.model), torch.arange(start, end)
    keys = rope.strip(own.prompt_kv.keys[:, :, start:end].float(), positions)
    keys, values = mapper.fuse(
        keys, own.prompt_kv.values[:, :, start:end], alignment.gather(sender_keys), alignment.gather(sender_values)
    )
    keys = torch.cat([own.prompt_kv.keys[:, :, :start], rope.apply(keys, positions)], dim=2)
    values = torch.cat([own.prompt_kv.values[:, :, :start], values], dim=2)
    prefix = Assembly.of(KVSegment(keys, values, 0, tuple(receiver_prompt[:end])), receiver_prompt[end:])
    request = GenerationRequest(receiver_prompt, max_new_tokens=max_new_tokens, prefix=prefix)
    (reply,) = receiver.generate_requests([request])
    return reply.text.strip(), alignment


def test_fusion_fuses_the_receivers_task_rows_with_the_senders_aligned_by_characters(tiny, gemma_tokenized, tmp_path):
    folder = fit(gemma_tokenized, tiny, tmp_path / "ridge")
    result = pair(gemma_tokenized, folder, mode="fusion").run(FUSED)
    sender, receiver = result.messages
    assert sender.content == "" and sender.usage_metadata["output_tokens"] == 0  # read only as a cache: silent
    # the ids the sender read: Gemma's tokenizer splits markup and data apart, unlike re-encoding the whole text
    sender_prompt = plan_prompt(gemma_tokenized, Agent("a").system_text(), FUSED.question, shard=FUSED.shards["a"])
    assert sender_prompt.text == sender.response_metadata["prompt"]
    sender_prompt = sender_prompt.token_ids
    receiver_prompt = tiny.encode_prompt(receiver.response_metadata["prompt"])
    assert "Mira" not in receiver.response_metadata["prompt"].replace(FUSED.question, "")  # no sender text read
    text = f"Question: {FUSED.question}"
    by_hand, alignment = fused_by_hand(gemma_tokenized, tiny, folder, sender_prompt, receiver_prompt, text, 8)
    assert len(alignment.sender_ids) != len(alignment.receiver_ids)  # the two tokenizers split the task differently
    assert receiver.content == by_hand
    usage = receiver.usage_metadata
    assert usage["input_tokens"] == len(receiver_prompt)  # reads no extra positions: all its own prompt
    assert usage["input_token_details"].get("cache_read", 0) == 0
    config = gemma_tokenized.model.config
    per_row = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    assert result.usage.per_edge["a->b"].kv_bytes == per_row * len(alignment.receiver_ids)
    unfused = Team([Agent("b", model="tiny-random", max_new_tokens=8)], CommGraph(["b"]), decision="last")
    alone = unfused.run(Task(FUSED.question, id="f")).messages[0]
    assert alone.response_metadata["prompt"] == receiver.response_metadata["prompt"]  # the same prompt, fused


def test_fusion_batched_equals_alone_and_bad_modes_are_refused(tiny, gemma_tokenized, tmp_path):
    team = pair(gemma_tokenized, fit(gemma_tokenized, tiny, tmp_path / "ridge"), mode="fusion")
    tasks = [Task(f"Where's key {i}?", id=str(i), shards={"a": f"Key {i} is in room {i * 11}."}) for i in range(3)]
    for task, result in zip(tasks, team.run_batch(tasks), strict=True):
        assert [m.content for m in result.messages] == [m.content for m in team.run(task).messages]
    assert team.channel_stats()["c2c"]["mode"] == "fusion"
    with pytest.raises(ValueError, match=r"'transfer' .* or 'fusion'"):
        pair(gemma_tokenized, tmp_path / "ridge", mode="merge")
