"""c2c edges: a receiver reads a sender on another model through the sender's cache, mapped into its format.

The sender is a tiny random Gemma 3 (sliding windows of 8 positions, layer 3 full attention), the receiver the
tiny random Llama; they share SmolLM2's tokenizer only to keep the fit small (the channel never uses that).

The replies the channel gives are checked against references built without its helpers (`mapped_reply`,
`fused_reply`): each model's keys before their rotation and its values come from hooks on a plain transformers
forward, the saved ridge weights are applied by matrix products, the receiver's rotation is written out, and the
receiver decodes greedily from a transformers cache. Fusion's character alignment is `align_tokens`' (tested on
its own in test_align.py). Each check is paired with one that shows it can fail (the reply without the context).
"""

import functools
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DynamicCache

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.agents.prompts import plan_prompt
from kvmesh.graph import Edge
from kvmesh.kvcomm.c2c.align import align_tokens
from kvmesh.kvcomm.c2c.capture import ContextTooLongError, position_free_kv
from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig, save_mapper
from kvmesh.kvcomm.c2c.mappers.quality import MapperQualityError, mapping_quality
from kvmesh.kvcomm.c2c.mappers.ridge import CachePair, fit_ridge
from kvmesh.kvcomm.channel import ChannelNotAvailableError
from kvmesh.llm.registry import resolve

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
    settings = {"mapper": str(folder), "threshold": threshold, "margin": -2.0, "mode": mode}
    return Team(agents, graph, decision="last", channels={"c2c": settings})


def rotate(keys, cos, sin):
    """RoPE as Llama applies it: x cos + rotate_half(x) sin, rotate_half(x1, x2) = (-x2, x1)."""
    half = keys.shape[-1] // 2
    return keys * cos + torch.cat([-keys[..., half:], keys[..., :half]], dim=-1) * sin


@torch.no_grad()
def unrotated_kv(model, ids):
    """Each layer's keys before the rotary embedding (after Gemma 3's `k_norm`) and its values, (L, H, S, D),
    taken from hooks on a plain forward of `ids`."""
    keys, values, hooks = [], [], []

    def heads(out, dim):  # (1, S, H * D) -> (H, S, D)
        return out[0].view(out.shape[1], -1, dim).transpose(0, 1)

    for layer in model.model.layers:
        attention, dim = layer.self_attn, layer.self_attn.head_dim
        if hasattr(attention, "k_norm"):  # Gemma 3: (1, H, S, D), normed after the projection
            hooks.append(attention.k_norm.register_forward_hook(lambda module, args, out: keys.append(out[0])))
        else:
            hooks.append(attention.k_proj.register_forward_hook(lambda m, a, out, d=dim: keys.append(heads(out, d))))
        hooks.append(attention.v_proj.register_forward_hook(lambda m, a, out, d=dim: values.append(heads(out, d))))
    try:
        model(input_ids=torch.tensor([ids]))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(keys), torch.stack(values)


def ridge(folder):
    """The saved ridge mapper as plain data: (layer_map, fuse_weight, map) with map(rows, layer, "key"|"value")
    turning sender rows (H, S, D) of sender layer layer_map[layer] into the receiver's (H', S, D')."""
    config, weights = json.loads((folder / "mapper.json").read_text()), load_file(folder / "mapper.safetensors")
    heads = config["receiver_geometry"]["kv_heads"]

    def mapped(rows, layer, side):  # flatten over heads, x W + b, split into the receiver's heads
        flat = rows.transpose(0, 1).reshape(rows.shape[1], -1)
        out = flat @ weights[f"{side}_weight"][layer] + weights[f"{side}_bias"][layer]
        return out.view(rows.shape[1], heads, -1).transpose(0, 1)

    return config["layer_map"], config["fuse_weight"], mapped


@functools.cache
def plain_llama():
    """The tiny random Llama loaded by transformers alone (not the runtime's copy)."""
    return AutoModelForCausalLM.from_pretrained(resolve("tiny-random")).eval()


@torch.no_grad()
def greedy_after(ids, max_new_tokens, keys=(), values=()):
    """The tiny Llama's greedy ids for `ids` read after a cache of unrotated `keys` and `values` (L, H, C, D),
    rotated here for positions 0 .. C - 1, so `ids` sit at C, C + 1, ... (one plain forward per token)."""
    llama = plain_llama()
    cache = DynamicCache(config=llama.config)
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        cos, sin = llama.model.rotary_emb(k, torch.arange(k.shape[1])[None])
        cache.update(rotate(k, cos, sin)[None], v[None], layer)
    out, step = [], ids
    for _ in range(max_new_tokens):
        token = int(llama(input_ids=torch.tensor([step]), cache=cache, use_cache=True).logits[0, -1].argmax())
        if token == llama.config.eos_token_id:
            break
        out.append(token)
        step = [token]
    return out


def mapped_reply(gemma, folder, context, own, max_new_tokens):
    """The receiver's greedy ids for `own` read after the Gemma's cache of `context`, mapped: receiver layer l
    holds sender layer layer_map[l]'s rows through layer l's weights."""
    layer_map, _, mapped = ridge(folder)
    keys, values = unrotated_kv(gemma, context)
    keys = torch.stack([mapped(keys[source], layer, "key") for layer, source in enumerate(layer_map)])
    values = torch.stack([mapped(values[source], layer, "value") for layer, source in enumerate(layer_map)])
    return greedy_after(own, max_new_tokens, keys, values)


def test_the_receiver_reads_the_mapped_sender_prompt(tiny, sliding, tmp_path):
    folder = fit(sliding, tiny, tmp_path / "ridge")
    result = pair(sliding, folder).run(TASK)
    sender, receiver = result.messages
    assert sender.content == "" and sender.usage_metadata["output_tokens"] == 0  # read only as a cache: silent
    context = tiny.tokenizer(sender.response_metadata["prompt"], add_special_tokens=False)["input_ids"]
    own = tiny.tokenizer(receiver.response_metadata["prompt"], add_special_tokens=False)["input_ids"]
    usage = receiver.usage_metadata
    assert usage["input_tokens"] == len(context) + len(own)
    assert usage["input_token_details"]["cache_read"] == len(context)
    expected = mapped_reply(sliding.model, folder, context, own, 8)
    assert receiver.content == tiny.tokenizer.decode(expected, skip_special_tokens=True).strip()
    unread = greedy_after(own, 8)  # the receiver's own prompt, no context
    assert receiver.content != tiny.tokenizer.decode(unread, skip_special_tokens=True).strip()  # so it can fail
    config = tiny.model.config
    per_position = 2 * config.num_key_value_heads * config.head_dim * 4
    assert result.usage.per_edge["a->b"].kv_bytes == config.num_hidden_layers * len(context) * per_position


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
        channels={"c2c": {"mapper": str(folder), "threshold": -1.0, "margin": -2.0}},
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


def fused_reply(gemma, folder, sender_prompt, receiver_prompt, alignment, max_new_tokens):
    """The receiver's greedy ids when its rows of the task (unrotated) are blended with the Gemma's rows of it,
    aligned by `alignment` and mapped: own + fuse_weight · (mapped − own); its prompt's rest is read after them."""
    layer_map, weight, mapped = ridge(folder)
    lo = _find(sender_prompt, list(alignment.sender_ids))
    sender_keys, sender_values = unrotated_kv(gemma, sender_prompt)
    sender_rows = {"key": sender_keys[:, :, lo : lo + len(alignment.sender_ids)]}
    sender_rows["value"] = sender_values[:, :, lo : lo + len(alignment.sender_ids)]
    start = _find(receiver_prompt, list(alignment.receiver_ids))
    end = start + len(alignment.receiver_ids)
    rows = dict(zip(("key", "value"), unrotated_kv(plain_llama(), receiver_prompt[:end]), strict=True))
    for side, own in rows.items():
        for layer, source in enumerate(layer_map):
            theirs = mapped(alignment.gather(sender_rows[side][source]), layer, side)
            own[layer, :, start:end] += weight * (theirs - own[layer, :, start:end])
    return greedy_after(receiver_prompt[end:], max_new_tokens, rows["key"], rows["value"])


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
    alignment = align_tokens(f"Question: {FUSED.question}", gemma_tokenized.tokenizer, tiny.tokenizer, bos=False)
    assert len(alignment.sender_ids) != len(alignment.receiver_ids)  # the two tokenizers split the task differently
    expected = fused_reply(gemma_tokenized.model, folder, sender_prompt, receiver_prompt, alignment, 8)
    assert receiver.content == tiny.tokenizer.decode(expected, skip_special_tokens=True).strip()
    usage = receiver.usage_metadata
    assert usage["input_tokens"] == len(receiver_prompt)  # reads no extra positions: all its own prompt
    assert usage["input_token_details"].get("cache_read", 0) == 0
    config = tiny.model.config  # bytes in the receiver's format: the rows it fuses, not the sender's
    per_row = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    assert result.usage.per_edge["a->b"].kv_bytes == per_row * len(alignment.receiver_ids)
    unfused = Team([Agent("b", model="tiny-random", max_new_tokens=8)], CommGraph(["b"]), decision="last")
    alone = unfused.run(Task(FUSED.question, id="f")).messages[0]
    assert alone.response_metadata["prompt"] == receiver.response_metadata["prompt"]  # the same prompt, fused
    assert alone.content != receiver.content  # and the fused rows change the reply: the comparison above can fail


def test_fusion_batched_equals_alone_and_bad_modes_are_refused(tiny, gemma_tokenized, tmp_path):
    team = pair(gemma_tokenized, fit(gemma_tokenized, tiny, tmp_path / "ridge"), mode="fusion")
    tasks = [Task(f"Where's key {i}?", id=str(i), shards={"a": f"Key {i} is in room {i * 11}."}) for i in range(3)]
    for task, result in zip(tasks, team.run_batch(tasks), strict=True):
        assert [m.content for m in result.messages] == [m.content for m in team.run(task).messages]
    assert team.channel_stats()["c2c"]["mode"] == "fusion"
    with pytest.raises(ValueError, match=r"'transfer' .* or 'fusion'"):
        pair(gemma_tokenized, tmp_path / "ridge", mode="merge")


def test_kv_bytes_count_the_rows_written_into_the_receivers_cache_in_its_format(tiny, sliding, tmp_path):
    """Fusion's pieces hold the sender's rows (its layers, heads and dtype); the bytes reported are the rows the
    receiver's cache takes: its layers the mapper feeds, its heads, its dtype, for each aligned token."""
    from kvmesh.kvcomm.assembly import Piece
    from kvmesh.kvcomm.c2c.channel import C2CChannel, C2CConfig
    from kvmesh.kvcomm.c2c.task_fusion import FUSE
    from kvmesh.llm.segment import KVSegment

    folder = fit(sliding, tiny, tmp_path / "ridge")
    channel = C2CChannel(C2CConfig(mapper=str(folder), threshold=-1.0, margin=-2.0, mode="fusion"))
    rows = torch.zeros(3, 1, 5, 8, dtype=torch.float64)  # a sender format unlike the receiver's (2, 2, S, 16)
    piece = Piece(source=KVSegment(rows, rows.clone(), 0, tuple(range(5))), kind=FUSE, channel="c2c")
    config = tiny.model.config
    assert channel.kv_bytes(tiny, [piece]) == 5 * config.num_hidden_layers * 2 * config.num_key_value_heads * 16 * 4
