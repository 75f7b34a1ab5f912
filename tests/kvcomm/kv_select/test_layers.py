"""Layer choice for kv-select: the depth prior, the mix, determinism, and calibration on a real model."""

import pytest
import torch

from kvmesh.kvcomm.kv_select.layers import LayerChoice, choose_layers, context_attention, depth_prior


def test_the_prior_peaks_at_its_centre():
    prior = depth_prior(11, centre=0.5, width=0.2)
    assert int(prior.argmax()) == 5 and torch.allclose(prior, prior.flip(0))
    assert int(depth_prior(11, centre=0.0, width=0.2).argmax()) == 0


def test_choice_mixes_attention_with_the_prior_and_is_deterministic():
    scores = torch.zeros(10)
    scores[9] = 1.0  # attention says: the last layer
    only_attention = choose_layers(scores, LayerChoice(fraction=0.1, weight=1.0, keep_first=False))
    only_prior = choose_layers(scores, LayerChoice(fraction=0.1, weight=0.0, keep_first=False))
    assert only_attention == {9} and only_prior == {4}  # ties in the prior go to the shallower layer
    three = choose_layers(scores, LayerChoice(fraction=0.3))
    assert len(three - {0}) == 3 and 0 in three and three == choose_layers(scores.clone(), LayerChoice(fraction=0.3))
    assert choose_layers(scores, LayerChoice(fraction=1.0)) == frozenset(range(10))


@pytest.mark.parametrize("bad", [{"fraction": 0}, {"fraction": 1.5}, {"weight": -0.1}, {"width": 0}])
def test_bad_choices_are_refused(bad):
    with pytest.raises(ValueError):
        LayerChoice(**bad)


def test_calibration_measures_attention_on_the_context(tiny):
    context = tiny.encode_prompt("Notes: the blue key is in the attic.")
    receiver = tiny.encode_prompt(" Question: where is the key?")
    scores = context_attention(tiny.model, [(context, receiver), (context[:5], receiver)])
    assert scores.shape == (tiny.model.config.num_hidden_layers,)
    assert bool(((scores > 0) & (scores < 1)).all())
    assert tiny.model.config._attn_implementation.endswith("sdpa")  # restored after calibration
    again = context_attention(tiny.model, [(context, receiver), (context[:5], receiver)])
    assert torch.equal(scores, again)
