"""Per-layer RoPE: stripping keys gives the model's own position-free keys, and apply undoes strip."""

import pytest
import torch

from kvmesh.kvcomm.rope import LayerRope, Rope, UnsupportedModelError
from kvmesh.llm.cache import cache_argument, new_cache, read_columns


def _projected_keys(model, ids):
    """(L, H, S, D) keys as each attention layer computes them before rotating: k_proj (then k_norm)."""
    found = []

    def hook(module, args, kwargs):
        hidden = kwargs["hidden_states"]
        keys = module.k_proj(hidden).view(1, hidden.shape[1], -1, module.head_dim).transpose(1, 2)
        found.append((module.k_norm(keys) if hasattr(module, "k_norm") else keys)[0])

    hooks = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in model.model.layers]
    cache = new_cache(model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), use_cache=True, **cache_argument(model, cache))
    for handle in hooks:
        handle.remove()
    return torch.stack(found), read_columns(cache, 0, 0, len(ids))[0]


@pytest.mark.parametrize("fixture", ["tiny", "sliding"])
def test_stripping_a_real_cache_gives_the_projected_keys(fixture, request):
    model = request.getfixturevalue(fixture).model
    ids = list(range(5, 12))  # 7 tokens: inside the tiny Gemma 3's window of 8
    projected, cached = _projected_keys(model, ids)
    rope = LayerRope.from_model(model)
    assert rope.layers == model.config.num_hidden_layers
    assert not torch.allclose(cached, projected, atol=1e-3)  # the cache really is rotated
    torch.testing.assert_close(rope.strip(cached), projected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope.apply(projected), cached, atol=1e-5, rtol=1e-5)


def test_gemma3_layers_rotate_with_their_own_theta(sliding):
    rope = LayerRope.from_model(sliding.model)
    types = sliding.model.config.layer_types
    full, window = types.index("full_attention"), types.index("sliding_attention")
    head_dim = sliding.model.config.head_dim
    assert float(rope.inv_freq[full, 1]) == pytest.approx(1e6 ** (-2 / head_dim))
    assert float(rope.inv_freq[window, 1]) == pytest.approx(1e4 ** (-2 / head_dim))
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        Rope.from_model(sliding.model)  # the one-theta re-rotation refuses it; LayerRope handles it


def test_strip_and_apply_round_trip_per_position_and_agree_with_a_constant_shift(tiny):
    rope = LayerRope.from_model(tiny.model)
    torch.manual_seed(0)
    keys = torch.randn(rope.layers, 2, 6, 16)
    positions = torch.tensor([0, 3, 4, 100, 7, 2000])  # per token, not a constant offset
    torch.testing.assert_close(rope.strip(rope.apply(keys, positions), positions), keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope.apply(rope.strip(keys, positions), positions), keys, atol=1e-5, rtol=1e-5)
    # moving every token by 9 is the one-theta Rope's rotation by 9
    moved = rope.move(keys, torch.arange(6), torch.arange(6) + 9)
    torch.testing.assert_close(moved, Rope.from_model(tiny.model).rotate(keys, 9), atol=1e-5, rtol=1e-5)
    assert rope.select([1]).layers == 1
    with pytest.raises(ValueError, match="positions"):
        rope.apply(keys, torch.arange(5))


def test_attention_scaling_and_partial_rotary_dimensions():
    rope = LayerRope(torch.tensor([[1.0, 0.5]]).double(), torch.tensor([2.0]).double())  # R = 2 of D = 6
    keys = torch.randn(1, 1, 3, 6)
    rotated = rope.apply(keys)
    assert torch.equal(rotated[..., 4:], keys[..., 4:])  # past 2R: untouched
    torch.testing.assert_close(rotated[:, :, 0, :4], 2 * keys[:, :, 0, :4])  # position 0: scaled only
    torch.testing.assert_close(rope.strip(rotated), keys)
