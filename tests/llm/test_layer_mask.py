"""Layers that skip latent columns: exact when every layer reads them, causal in every layer, batch-invariant."""

import pytest
import torch

from kvmesh.kvcomm.assembly import Assembly
from kvmesh.llm.base import GenerationRequest, LatentSpan
from kvmesh.llm.layer_mask import use_layer_masks

CONTEXT = "Private notes: the blue key is in the attic, the red key is under the mat."
QUESTION = "\n\nQuestion: where is the blue key? Answer briefly."


def context_prefix(lm, context_ids, rest, layers):
    """The sender's cache of `context_ids` as a receiver's prefix that only `layers` read (the sink excepted)."""
    (sender,) = lm.generate_requests([GenerationRequest(context_ids, max_new_tokens=0, keep_kv=True)])
    prefix = Assembly.of(sender.prompt_kv, rest, spare=64)
    prefix.latent = LatentSpan(1, len(context_ids), frozenset(layers))
    return prefix


def test_every_layer_reading_the_context_is_exactly_the_dense_prompt(tiny):
    context, question = tiny.encode_prompt(CONTEXT), tiny.encode_prompt(QUESTION)
    every = range(tiny.model.config.num_hidden_layers)
    prefix = context_prefix(tiny, context, question, every)
    (latent,) = tiny.generate_requests([GenerationRequest(context + question, max_new_tokens=12, prefix=prefix)])
    (dense,) = tiny.generate_requests([GenerationRequest(context + question, max_new_tokens=12)])
    assert latent.token_ids == dense.token_ids


def test_layers_that_skip_the_context_are_causal_and_blind_to_it(tiny):
    model, layers = tiny.model, tiny.model.config.num_hidden_layers
    assert use_layer_masks(model)
    ids = torch.tensor([tiny.encode_prompt(CONTEXT + QUESTION)])
    hide = torch.zeros(ids.shape, dtype=torch.bool)
    hide[0, 1:10] = True
    hidden = {0: hide}  # layer 0 skips positions 1..9; the other layers read everything

    def states(tokens):
        with torch.no_grad():
            return model(input_ids=tokens, hidden=hidden, output_hidden_states=True).hidden_states

    base = states(ids)
    later = ids.clone()
    later[0, -1] = (later[0, -1] + 7) % len(tiny.tokenizer)  # a later token changes ...
    for layer, (a, b) in enumerate(zip(base, states(later), strict=True)):
        assert torch.equal(a[0, :-1], b[0, :-1]), f"layer {layer} let a query read a later token"
    hidden_changed = ids.clone()
    hidden_changed[0, 5] = (hidden_changed[0, 5] + 3) % len(tiny.tokenizer)
    skipped = states(hidden_changed)
    # ... layer 0's output at positions after the hidden ones does not see position 5 (its residual stream does)
    assert torch.allclose(base[1][0, 10:] - base[0][0, 10:], skipped[1][0, 10:] - skipped[0][0, 10:], atol=1e-5)
    hidden.clear()  # the same change is seen when layer 0 reads everything: the check above can fail
    seen = states(hidden_changed)
    assert not torch.allclose(base[1][0, 10:] - base[0][0, 10:], seen[1][0, 10:] - seen[0][0, 10:], atol=1e-5)
    assert layers > 1


def test_a_context_no_layer_reads_cannot_change_the_reply(tiny):
    question = tiny.encode_prompt(QUESTION)
    one = tiny.encode_prompt(CONTEXT)
    other = tiny.encode_prompt(CONTEXT.replace("blue", "green").replace("red", "old"))
    assert len(one) == len(other) and one != other and one[0] == other[0]
    replies = []
    for context in (one, other):
        prefix = context_prefix(tiny, context, question, ())
        (reply,) = tiny.generate_requests([GenerationRequest(context + question, max_new_tokens=10, prefix=prefix)])
        replies.append(reply.token_ids)
    assert replies[0] == replies[1]
    read = [
        tiny.generate_requests([GenerationRequest(c + question, 10, prefix=context_prefix(tiny, c, question, (0,)))])
        for c in (one, other)
    ]
    assert read[0][0].token_ids != read[1][0].token_ids  # a layer that reads it does see the difference


@pytest.mark.parametrize("read", [(), (0,), (1,)])
def test_rows_with_latent_columns_batch_with_plain_rows_unchanged(tiny, read):
    context, question = tiny.encode_prompt(CONTEXT), tiny.encode_prompt(QUESTION)
    requests = [
        GenerationRequest(context + question, max_new_tokens=8, prefix=context_prefix(tiny, context, question, read)),
        GenerationRequest(tiny.encode_prompt("Say something else entirely, please."), max_new_tokens=8),
        GenerationRequest(context + question, max_new_tokens=8, prefix=context_prefix(tiny, context, question, (0, 1))),
    ]
    together = tiny.generate_requests(requests)
    alone = [tiny.generate_requests([r])[0] for r in requests]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]


def test_the_attention_pattern_is_causal_in_every_layer_and_blind_where_hidden(tiny):
    from kvmesh.llm.layer_mask import PREFIX

    model, layers = tiny.model, tiny.model.config.num_hidden_layers
    ids = torch.tensor([tiny.encode_prompt(CONTEXT + QUESTION)])
    hide = torch.zeros(ids.shape, dtype=torch.bool)
    hide[0, 1:10] = True  # the skipping layer sees the sink (position 0) and everything from position 10 on
    current = model.config._attn_implementation
    model.set_attn_implementation(PREFIX + "eager")  # eager attention returns its weights
    try:
        with torch.no_grad():
            attentions = model(input_ids=ids, hidden={0: hide}, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(current)
    assert len(attentions) == layers
    later = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)
    for layer, weights in enumerate(attentions):  # (1, H, T, T)
        assert weights[0][:, later].abs().max() == 0, f"layer {layer} attends to a later token"
        assert torch.allclose(weights.sum(-1), torch.ones(()))
    assert attentions[0][0, :, 10:, 1:10].abs().max() == 0  # the skipping layer never reads the hidden columns
    assert attentions[0][0, :, 10:, 0].min() > 0  # but it reads the sink
    assert attentions[1][0, :, 10:, 1:10].sum() > 0  # a reading layer does read them
