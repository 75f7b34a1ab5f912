"""The reuse engine on a real (tiny random) model: exact where it must be, learning anchors from dense calls."""

import json

import pytest
import torch

from kvmesh.kvcomm.assembly import Piece, run_preparation
from kvmesh.kvcomm.kv_reuse.engine import ReuseConfig, ReuseEngine
from kvmesh.kvcomm.rope import UnsupportedModelError
from kvmesh.llm.cache import cache_argument, new_cache, read_columns
from kvmesh.llm.segment import KVSegment


def ids_of(tiny, text):
    return tuple(tiny.tokenizer(text, add_special_tokens=False)["input_ids"])


def dense(model, ids):
    """(next-token logits, prompt cache as a segment) of a dense prefill."""
    cache = new_cache(model.config)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(ids)]), **cache_argument(model, cache)).logits[0, -1]
    return logits, KVSegment(*read_columns(cache, 0, 0, len(ids)), 0, tuple(ids))


def assemble(tiny, engine, receiver, pieces):
    """The engine's preparation run to its end (its template and own-text rows on the tiny model)."""
    return run_preparation(engine.assemble(receiver, pieces), tiny)


def finish(model, assembly):
    cache = assembly.cache(model.config)
    start = assembly.length
    positions = torch.arange(start, start + len(assembly.rest))[None]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([assembly.rest]), position_ids=positions, **cache_argument(model, cache))
    return out.logits[0, -1]


@pytest.fixture
def prompt(tiny):
    head = ids_of(tiny, "You are the second agent. Check the notes.")
    donor_head = ids_of(tiny, "You are the first agent, who reads the notes first and reports.")
    task = ids_of(tiny, " Notes: Mira lives in Oslo. Tavo works as a baker. Who bakes?")
    tail = ids_of(tiny, " Answer briefly.")
    _, donor_cache = dense(tiny.model, donor_head + task)
    task_source = donor_cache.slice(len(donor_head))  # the task as the first agent encoded it
    return head, task, tail, task_source


def test_first_call_prefills_densely_then_anchors_make_reuse_exact_for_a_seen_sample(tiny, prompt):
    head, task, tail, source = prompt
    engine = ReuseEngine(tiny, ReuseConfig(min_anchors=1))
    pieces = [Piece(head), Piece(task, source, "task"), Piece(tail)]
    assert assemble(tiny, engine, "agent_2", pieces) is None  # no anchor yet: dense
    logits, dense_cache = dense(tiny.model, head + task + tail)
    engine.learn("agent_2", pieces, dense_cache)
    assembly = assemble(tiny, engine, "agent_2", pieces)
    assert assembly is not None and assembly.rest == list(tail) and assembly.reused_tokens == len(head + task)
    # the anchor holds this very sample's offset (in float16): the assembled cache is the dense one
    expected = dense_cache.slice(0, len(head + task))
    torch.testing.assert_close(assembly.prefix.keys, expected.keys, atol=4e-3, rtol=0)
    torch.testing.assert_close(assembly.prefix.values, expected.values, atol=4e-3, rtol=0)
    torch.testing.assert_close(finish(tiny.model, assembly), logits, atol=2e-2, rtol=0)
    assert engine.stats.calls == 2 and engine.stats.reuse_rate == 0.5
    assert engine.anchors.nbytes > 0 and len(engine.anchors) == 1


def test_reusing_an_exact_shared_prefix_equals_dense_prefill(tiny, prompt):
    head, task, tail, _ = prompt
    engine = ReuseEngine(tiny, ReuseConfig(min_anchors=1))
    logits, dense_cache = dense(tiny.model, head + task + tail)
    same_context = dense_cache.slice(len(head), len(head) + len(task))  # encoded where it will be used
    pieces = [Piece(head), Piece(task, same_context, "task"), Piece(tail)]
    engine.learn("r", pieces, dense_cache)  # offset zero: the source already is the dense cache
    assembly = assemble(tiny, engine, "r", pieces)
    # equal up to float rounding (the head template is its own, shorter, prefill)
    torch.testing.assert_close(assembly.prefix.keys, dense_cache.slice(0, len(head + task)).keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(finish(tiny.model, assembly), logits, atol=1e-4, rtol=1e-4)


def test_glue_without_a_donor_uses_a_template_encoded_once(tiny, prompt):
    head, task, tail, source = prompt
    glue = ids_of(tiny, "\n\nMessage from agent_1:\n")
    engine = ReuseEngine(tiny, ReuseConfig(min_anchors=1), sink=head[:1])
    pieces = [Piece(head), Piece(task, source, "task"), Piece(glue), Piece(tail)]
    assert assemble(tiny, engine, "r", pieces) is None  # no anchors yet; the glue's template is encoded
    engine.learn("r", pieces, dense(tiny.model, head + task + glue + tail)[1])
    assembly = assemble(tiny, engine, "r", pieces)
    assert assembly is not None and len(assembly.prefix) == len(head + task + glue)
    assert engine.stats.template_tokens == len(glue) + len(head)  # the glue and the head, once each
    assemble(tiny, engine, "r", pieces)
    assert engine.stats.template_tokens == len(glue) + len(head)


def test_bad_pieces_and_unsupported_models_are_refused(tiny, sliding, prompt):
    head, task, tail, source = prompt
    with pytest.raises(ValueError, match="exactly the piece's tokens"):
        Piece(task[:-1], source, "task")
    with pytest.raises(ValueError, match="at least one token"):
        Piece(())
    with pytest.raises(ValueError, match="head, at least one middle piece and a tail"):
        assemble(tiny, ReuseEngine(tiny), "r", [Piece(head), Piece(tail)])
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        ReuseEngine(sliding)


def test_identity_names_the_model_its_cache_layout_and_sink_as_json(tiny):
    """What saved anchors are checked against: a JSON round trip keeps it equal, another layout differs."""
    identity = ReuseEngine(tiny, sink=(1,)).identity()
    config = tiny.model.config
    assert identity == {
        "model": "tiny-random",
        "fingerprint": {
            "model_type": config.model_type,
            "layers": config.num_hidden_layers,
            "kv_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "dtype": "float32",
        },
        "sink": [1],
    }
    assert json.loads(json.dumps(identity)) == identity
