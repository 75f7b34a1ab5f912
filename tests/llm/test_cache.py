import torch
from transformers import DynamicCache

from kvmesh.llm.cache import (
    GrowingLayer,
    cache_argument,
    can_merge,
    new_cache,
    select_rows,
    stack_left_padded,
    trim_left,
)


def _decode(model, cache, ids, steps=6):
    """Prefill `ids` into `cache`, then greedy-decode `steps` tokens; returns every step's logits."""
    with torch.inference_mode():
        logits = [model(input_ids=ids, **cache_argument(model, cache), logits_to_keep=1).logits[:, -1]]
        for _ in range(steps):
            token = logits[-1].argmax(-1, keepdim=True)
            logits.append(model(input_ids=token, **cache_argument(model, cache), logits_to_keep=1).logits[:, -1])
    return torch.stack(logits)


def test_growing_cache_is_bit_identical_to_transformers_cache(tiny):
    ids = torch.tensor([tiny.encode_prompt(tiny.render([("user", "Tell me a story about a fox.")]))] * 2)
    growing = new_cache(tiny.model.config)
    assert all(isinstance(layer, GrowingLayer) for layer in growing.layers)
    reference = _decode(tiny.model, DynamicCache(config=tiny.model.config), ids, steps=300)  # past one GROWTH
    assert torch.equal(_decode(tiny.model, growing, ids, steps=300), reference)
    assert growing.get_seq_length() == ids.shape[1] + 300
    assert can_merge(tiny.model.config)


def test_stack_select_and_trim(tiny):
    config = tiny.model.config

    def filled(batch, length, value):
        cache = new_cache(config)
        for layer in cache.layers:
            layer.update(torch.full((batch, 2, length, 4), value), torch.full((batch, 2, length, 4), -value))
        return cache

    stacked = stack_left_padded([filled(1, 3, 1.0), filled(2, 5, 2.0)], 5, config)
    keys = stacked.layers[0].keys
    assert keys.shape == (3, 2, 5, 4)
    assert torch.equal(keys[0, :, :2], torch.zeros(2, 2, 4)) and torch.equal(keys[0, :, 2:], torch.ones(2, 3, 4))
    assert torch.equal(keys[1:], torch.full((2, 2, 5, 4), 2.0))
    select_rows(stacked, torch.tensor([0, 2]))
    assert stacked.layers[0].keys.shape == (2, 2, 5, 4)
    trim_left(stacked, 2)
    layer = stacked.layers[-1]
    assert layer.keys.shape == (2, 2, 3, 4) and stacked.get_seq_length() == 3
    assert torch.equal(layer.keys[0], torch.ones(2, 3, 4)) and torch.equal(layer.values[1], torch.full((2, 3, 4), -2.0))
    layer.update(torch.full((2, 2, 1, 4), 7.0), torch.zeros(2, 2, 1, 4))  # appending still works after a trim
    assert layer.keys.shape == (2, 2, 4, 4) and torch.equal(layer.keys[:, :, -1], torch.full((2, 2, 4), 7.0))
