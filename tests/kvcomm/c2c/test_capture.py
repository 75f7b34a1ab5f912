"""Capturing a model's position-free cache and queries, sliding-window limits, differentiable prefix caches."""

import pytest
import torch

from kvmesh.kvcomm.c2c.capture import ContextTooLongError, capture, position_free_kv, prefix_cache
from kvmesh.kvcomm.rope import LayerRope
from kvmesh.llm.cache import cache_argument


def test_captured_queries_and_keys_reproduce_the_models_attention(tiny):
    """Rotated back into place, the captured queries attending over the captured cache give the attention
    module's own output (before o_proj) for the last tokens."""
    ids = tiny.encode_prompt("Mira's brother is Tavo. Tavo lives in Orvik.")
    run = capture(tiny, ids, queries_from=len(ids) - 3)
    assert run.keys.shape == (2, 2, len(ids), 16) and run.queries.shape == (2, 4, 3, 16)
    outputs = []
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args: outputs.append(args[0][0, -3:]))
        for layer in tiny.model.model.layers
    ]
    with torch.no_grad():
        tiny.model(input_ids=torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    rope = LayerRope.from_model(tiny)
    positions = torch.arange(len(ids))
    queries, keys = rope.apply(run.queries, positions[-3:]), rope.apply(run.keys)
    for layer, attention in enumerate(tiny.model.model.layers):
        values = run.values[layer].repeat_interleave(2, dim=0)
        logits = (
            queries[layer] @ keys[layer].repeat_interleave(2, dim=0).transpose(-1, -2) * attention.self_attn.scaling
        )
        logits = logits.masked_fill(positions[None, :] > positions[-3:, None], float("-inf"))
        expected = (torch.softmax(logits, -1) @ values).permute(1, 0, 2).flatten(1)
        torch.testing.assert_close(expected, outputs[layer], atol=1e-5, rtol=1e-4)


def test_a_context_longer_than_a_sliding_window_is_refused_unless_only_full_layers_are_read(sliding):
    ids = list(range(10, 19))  # 9 tokens; the tiny Gemma 3 keeps 7 in its sliding layers (window 8)
    with pytest.raises(ContextTooLongError, match="keep the last 7 positions only; shorten the context to at most 7"):
        position_free_kv(sliding, ids)
    keys, _ = position_free_kv(sliding, ids, layers=[3])  # layer 3 is its full-attention layer
    assert keys.shape == (4, 1, 9, 16)
    assert bool((keys[0, :, :2] == 0).all()) and bool((keys[0, :, 2:] != 0).any())  # sliding: zeros in front
    assert bool((keys[3] != 0).all(dim=-1).all())
    assert position_free_kv(sliding, ids[:7])[0].shape == (4, 1, 7, 16)


def test_a_prefix_cache_passes_gradients_to_its_keys_and_values(tiny):
    keys, values = position_free_kv(tiny, tiny.encode_prompt("Notes: the key is in the attic."))
    keys.requires_grad_(True)
    values.requires_grad_(True)
    rope = LayerRope.from_model(tiny)
    cache = prefix_cache(rope.apply(keys), values, tiny.model.config)
    count = keys.shape[2]
    logits = tiny.model(
        input_ids=torch.tensor([[5, 6, 7]]),
        position_ids=torch.arange(count, count + 3)[None],
        use_cache=True,
        **cache_argument(tiny.model, cache),
    ).logits
    logits.sum().backward()
    assert keys.grad is not None and float(keys.grad.abs().sum()) > 0 and float(values.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="1 layers of keys for a model with 2"):
        prefix_cache(keys[:1], values[:1], tiny.model.config)
