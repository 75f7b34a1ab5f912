"""What a kv-select layer set means, checked against plain transformers forwards of the tiny random Llama.

A receiver's layer reads the sender's whole context when it is chosen, and only the context's first (sink)
token otherwise. In that case the sink sits right before the receiver's own tokens, as if the cache held the
sink alone. The reference (`layered_reply`) computes this without the channel, its cache or its attention masks.
The receiver's hidden states go up one layer at a time. Each layer runs inside a plain forward of
[context, own] (chosen) or [sink, own] (not chosen), and the own positions' input is replaced by what the
previous layer gave them. Rotary embeddings depend only on distances, so [sink, own] at 0, 1, ... is the same as
the sink at C - 1 followed by own at C, C + 1, ...
"""

import functools

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.graph import Edge
from kvmesh.llm.registry import resolve

TASK = Task("Where is the blue key?", id="t", shards={"a": "The blue key is in the attic. The red one is lost."})
LAYER_SETS = [(), (0,), (1,), (0, 1)]  # the tiny model has 2 layers
NEW_TOKENS = 16


@functools.cache
def plain_llama():
    """The tiny random Llama loaded by transformers alone (not the runtime's copy, nor its attention)."""
    return AutoModelForCausalLM.from_pretrained(resolve("tiny-random")).eval()


@functools.cache
def plain_tokenizer():
    return AutoTokenizer.from_pretrained(resolve("tiny-random"))


class _LayerDone(Exception):
    """Ends a forward once the layer of interest has run."""


def layer_output(model, ids, index, own_input):
    """Layer `index`'s output over a plain forward of `ids`, with its input at the last len(own_input) positions
    replaced by `own_input` (None: left as the embeddings)."""
    layer, found = model.model.layers[index], []

    def before(module, args, kwargs):
        if own_input is None:
            return None
        hidden = args[0].clone()
        hidden[0, -len(own_input) :] = own_input
        return (hidden, *args[1:]), kwargs

    def after(module, args, kwargs, output):
        found.append(output[0])
        raise _LayerDone

    hooks = [
        layer.register_forward_pre_hook(before, with_kwargs=True),
        layer.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        model(input_ids=torch.tensor([ids]))
    except _LayerDone:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return found[0]


@torch.no_grad()
def layered_reply(context, own, chosen, max_new_tokens):
    """Greedy ids after `own` when the layers in `chosen` read all of `context` and the others its sink alone."""
    model, reply = plain_llama(), []
    for _ in range(max_new_tokens):
        ids, hidden = own + reply, None
        for index in range(model.config.num_hidden_layers):
            prefix = context if index in chosen else context[:1]
            hidden = layer_output(model, prefix + ids, index, hidden)[-len(ids) :]
        token = int(model.lm_head(model.model.norm(hidden[-1])).argmax())
        if token == model.config.eos_token_id:
            break
        reply.append(token)
    return reply


@torch.no_grad()
def plain_reply(ids, max_new_tokens):
    """transformers' own greedy generation after `ids`."""
    model = plain_llama()
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(ids) :].tolist()


def receiver_run(layers):
    """(context ids, the receiver's own prompt ids, its reply) of a run where b reads a over kv-select."""
    agents = [Agent("a", model="tiny-random"), Agent("b", model="tiny-random", max_new_tokens=NEW_TOKENS)]
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select")])
    result = Team(agents, graph, decision="last", channels={"kv-select": {"layers": layers}}).run(TASK)
    sender, receiver = result.messages
    tokenizer = plain_tokenizer()
    context = tokenizer(sender.response_metadata["prompt"], add_special_tokens=False)["input_ids"]
    own = tokenizer(receiver.response_metadata["prompt"], add_special_tokens=False)["input_ids"]
    return context, own, receiver.content


def text(ids):
    return plain_tokenizer().decode(ids, skip_special_tokens=True).strip()  # replies are recorded stripped


@pytest.mark.parametrize("layers", LAYER_SETS, ids=lambda layers: f"layers={list(layers)}")
def test_a_layer_reads_the_context_only_when_chosen_and_the_sink_alone_otherwise(layers):
    context, own, reply = receiver_run(layers)
    assert reply == text(layered_reply(context, own, set(layers), NEW_TOKENS))


def test_the_reference_is_plain_reading_at_both_ends_and_tells_every_layer_set_apart():
    context, own, _ = receiver_run(())
    replies = {layers: text(layered_reply(context, own, set(layers), NEW_TOKENS)) for layers in LAYER_SETS}
    # no layer chosen: the receiver reads the sink alone, as if it had never been sent the context
    assert replies[()] == text(plain_reply(context[:1] + own, NEW_TOKENS))
    # every layer chosen: reading the whole context, as one prompt
    assert replies[(0, 1)] == text(plain_reply(context + own, NEW_TOKENS))
    assert len(set(replies.values())) == len(LAYER_SETS)  # so each comparison above can fail
