"""The cache toolkit: re-rotation, segments, splicing caches, and refusing models it cannot handle."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kvmesh.kvcomm.rope import Rope, UnsupportedModelError
from kvmesh.llm.cache import cache_argument, cache_from_kv, new_cache, read_columns
from kvmesh.llm.segment import KVSegment


def encode(model, ids, start=0, cache=None):
    """Prefill `ids` at positions start.. into `cache` (a new one if None); returns (last logits, cache)."""
    cache = cache if cache is not None else new_cache(model.config)
    positions = torch.arange(start, start + len(ids))[None]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), position_ids=positions, **cache_argument(model, cache))
    return out.logits[0, -1], cache


def segment_of(model, ids, start=0):
    _, cache = encode(model, ids, start)
    return KVSegment(*read_columns(cache, 0, 0, len(ids)), start, tuple(ids))


@pytest.fixture(scope="module")
def ids(tiny):
    text = "The fox jumps over the lazy dog while the cat sleeps on a warm mat."
    return tiny.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_first_layer_keys_re_rotated_equal_keys_encoded_at_the_target(tiny, ids):
    rope = Rope.from_model(tiny.model)
    prefix = ids[:7]
    standalone = segment_of(tiny.model, ids)
    _, cache = encode(tiny.model, prefix + ids)
    in_place_keys, in_place_values = read_columns(cache, 0, len(prefix), len(prefix) + len(ids))
    moved = rope.move(standalone, len(prefix))
    assert moved.start == len(prefix) and moved.token_ids == standalone.token_ids
    torch.testing.assert_close(moved.keys[0], in_place_keys[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moved.values[0], in_place_values[0])  # values carry no position
    assert not torch.allclose(standalone.keys[0], in_place_keys[0], atol=1e-3)  # the rotation did something
    assert (moved.keys[1:] - in_place_keys[1:]).abs().max() > 1e-3  # deeper layers carry their context


def test_rotations_compose_and_invert(tiny):
    rope = Rope.from_model(tiny.model)
    keys = torch.randn(2, 3, 5, tiny.model.config.head_dim)
    torch.testing.assert_close(rope.rotate(rope.rotate(keys, 300), 700), rope.rotate(keys, 1000), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rope.rotate(rope.rotate(keys, 4096), -4096), keys, rtol=1e-4, atol=1e-4)
    assert torch.equal(rope.rotate(keys, 0), keys)


def test_an_exact_shared_prefix_spliced_from_segments_equals_dense_prefill(tiny, ids):
    prefix, rest = ids[:9], ids[9:]
    dense, _ = encode(tiny.model, prefix + rest)
    # the prefix as two segments joined back together, then the rest prefilled after them
    whole = segment_of(tiny.model, prefix)
    joined = KVSegment.concat([whole.slice(0, 4), whole.slice(4)])
    logits, _ = encode(tiny.model, rest, len(prefix), cache_from_kv(joined.keys, joined.values, tiny.model.config))
    torch.testing.assert_close(logits, dense, rtol=1e-5, atol=1e-5)


def test_segment_operations_and_their_errors(tiny, ids):
    segment = segment_of(tiny.model, ids, start=3)
    layers, heads, length, dim = segment.keys.shape
    assert (len(segment), segment.end) == (len(ids), 3 + len(ids))
    assert segment.nbytes == 2 * layers * heads * length * dim * 4
    part = segment.slice(2, 5)
    assert (part.start, part.token_ids) == (5, tuple(ids[2:5]))
    assert segment.select_layers([1]).keys.shape == (1, heads, length, dim)
    with pytest.raises(ValueError, match="segments must be contiguous"):
        KVSegment.concat([segment.slice(0, 2), segment.slice(3)])
    with pytest.raises(IndexError):
        segment.slice(4, 2)
    with pytest.raises(ValueError, match="cached positions for"):
        KVSegment(segment.keys, segment.values, 0, tuple(ids[:-1]))
    with pytest.raises(ValueError, match="layers of keys"):
        cache_from_kv(segment.keys[:1], segment.values[:1], tiny.model.config)


def test_models_the_toolkit_cannot_handle_say_why(sliding):
    with pytest.raises(UnsupportedModelError, match="sliding-window layers"):
        Rope.from_model(sliding.model)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    )
    with pytest.raises(UnsupportedModelError, match="rope type 'dynamic'"):
        Rope.from_model(LlamaForCausalLM(config))
