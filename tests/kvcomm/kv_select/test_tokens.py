"""kv-select's token selection: first-layer attention of the receiver's tokens, the least attended dropped."""

import torch

from kvmesh.kvcomm.assembly import Assembly
from kvmesh.kvcomm.kv_select.tokens import context_token_scores, tokens_to_drop
from kvmesh.llm.base import GenerationRequest, LatentSpan
from kvmesh.llm.segment import KVSegment

CONTEXT = "Notes: Mira lives in Orvik. Tavo has a goat. The red key is under the mat."
QUESTION = "\n\nQuestion: where does Mira live?"


def sender_cache(lm, ids):
    (sender,) = lm.generate_requests([GenerationRequest(ids, max_new_tokens=0, keep_kv=True)])
    return sender.prompt_kv


def test_scores_are_the_first_layers_attention_of_the_receiver(tiny):
    context, question = tiny.encode_prompt(CONTEXT), tiny.encode_prompt(QUESTION)
    scores = context_token_scores(tiny.model, sender_cache(tiny, context), question)
    # the same mass read off the model's own eager attention over the whole prompt, layer 0
    current = tiny.model.config._attn_implementation  # the runtime's, put back for the tests after this one
    tiny.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            weights = tiny.model(input_ids=torch.tensor([context + question]), output_attentions=True).attentions[0]
    finally:
        tiny.model.set_attn_implementation(current)
    over_context = weights[0, :, len(context) :, : len(context)]
    expected = (over_context / over_context.sum(-1, keepdim=True)).mean(dim=(0, 1))
    assert torch.allclose(scores, expected, atol=1e-4)


def test_the_least_attended_go_and_the_sink_stays():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.5, 0.0])
    assert tokens_to_drop(scores, 0.6) == {1, 5}  # 3 of the 5 candidates kept: 2, 4 (tie, earlier first), 3
    assert tokens_to_drop(scores, 1.0) == frozenset()
    assert 0 not in tokens_to_drop(torch.zeros(6), 0.2)


def test_dropped_positions_cannot_change_the_reply(tiny):
    context, question = tiny.encode_prompt(CONTEXT), tiny.encode_prompt(QUESTION)
    kv, every = sender_cache(tiny, context), frozenset(range(tiny.model.config.num_hidden_layers))
    dropped = frozenset(range(3, len(context), 2))

    def reply(segment, span):
        prefix = Assembly.of(segment, question, spare=16)
        prefix.latent = span
        (out,) = tiny.generate_requests([GenerationRequest(context + question, max_new_tokens=8, prefix=prefix)])
        return out.token_ids

    noise = torch.zeros(kv.keys.shape[2], dtype=torch.bool)
    noise[sorted(dropped)] = True
    keys, values = kv.keys.clone(), kv.values.clone()
    keys[:, :, noise] = torch.randn_like(keys[:, :, noise]) * 5
    values[:, :, noise] = torch.randn_like(values[:, :, noise]) * 5
    scrambled = KVSegment(keys, values, 0, kv.token_ids)
    span = LatentSpan(1, len(context), every, dropped)
    assert reply(kv, span) == reply(scrambled, span)
    assert reply(kv, None) != reply(scrambled, None)  # read, the same change does show: the check above can fail
