"""The reuse engine on a real (tiny random) model: exact where it must be, learning anchors from dense calls."""

import pytest
import torch

from kvmesh.kvcomm.benchmark import KVReuseBenchConfig, run_benchmark
from kvmesh.kvcomm.cache import cache_argument, new_cache, read_columns
from kvmesh.kvcomm.reuse import Piece, ReuseConfig, ReuseEngine
from kvmesh.kvcomm.rope import UnsupportedModelError
from kvmesh.kvcomm.segment import KVSegment


def ids_of(tiny, text):
    return tuple(tiny.tokenizer(text, add_special_tokens=False)["input_ids"])


def dense(model, ids):
    """(next-token logits, prompt cache as a segment) of a dense prefill."""
    cache = new_cache(model.config)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(ids)]), **cache_argument(model, cache)).logits[0, -1]
    return logits, KVSegment(*read_columns(cache, 0, 0, len(ids)), 0, tuple(ids))


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
    assert engine.assemble("agent_2", pieces) is None  # no anchor yet: dense
    logits, dense_cache = dense(tiny.model, head + task + tail)
    engine.learn("agent_2", pieces, dense_cache)
    assembly = engine.assemble("agent_2", pieces)
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
    assembly = engine.assemble("r", pieces)
    # equal up to float rounding (the head template is its own, shorter, prefill)
    torch.testing.assert_close(assembly.prefix.keys, dense_cache.slice(0, len(head + task)).keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(finish(tiny.model, assembly), logits, atol=1e-4, rtol=1e-4)


def test_glue_without_a_donor_uses_a_template_encoded_once(tiny, prompt):
    head, task, tail, source = prompt
    glue = ids_of(tiny, "\n\nMessage from agent_1:\n")
    engine = ReuseEngine(tiny, ReuseConfig(min_anchors=1), sink=head[:1])
    pieces = [Piece(head), Piece(task, source, "task"), Piece(glue), Piece(tail)]
    engine.learn("r", pieces, dense(tiny.model, head + task + glue + tail)[1])
    assembly = engine.assemble("r", pieces)
    assert assembly is not None and len(assembly.prefix) == len(head + task + glue)
    assert engine.stats.template_tokens == len(glue) + len(head)  # the glue and the head, once each
    engine.assemble("r", pieces)
    assert engine.stats.template_tokens == len(glue) + len(head)


def test_bad_pieces_and_unsupported_models_are_refused(tiny, sliding, prompt):
    head, task, tail, source = prompt
    with pytest.raises(ValueError, match="exactly the piece's tokens"):
        Piece(task[:-1], source, "task")
    with pytest.raises(ValueError, match="at least one token"):
        Piece(())
    with pytest.raises(ValueError, match="head, at least one middle piece and a tail"):
        ReuseEngine(tiny).assemble("r", [Piece(head), Piece(tail)])
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        ReuseEngine(sliding)


def test_the_benchmark_runs_end_to_end(tiny):
    config = KVReuseBenchConfig(
        model="tiny-random",
        agents=3,
        input_tokens=24,
        prefix_tokens=12,
        output_tokens=6,
        tasks=3,
        warmup=2,
        min_anchors=2,
        agreement_tokens=4,
        gamma=2.0,  # reuse whenever an anchor exists (random weights put unrelated texts far apart)
    )
    lines = []
    result = run_benchmark(config, progress=lines.append)
    assert len(result["ttft_dense_s"]) == len(result["ttft_reuse_s"]) == 3
    assert result["reuse_rate"] == 1.0  # after the warm-up task every later agent has an anchor per piece
    assert 0 <= result["agreement"] <= 1 and result["anchor_memory_mb"] > 0
    assert result["speedup_last_agent"] == result["ttft_dense_s"][-1] / result["ttft_reuse_s"][-1]
    assert len(lines) == 9 and "dense fallback" in lines[4] and "dense fallback" not in lines[7]
    assert 0 <= result["agreement_reused_calls"] <= 1


def test_engine_rows_on_a_prebuilt_cache_and_kept_caches(tiny):
    """A row that arrives with an exact prebuilt prefix decodes like a plain one, batched with others, and
    rows that ask for it return their prompt's cache and their reply's cache, equal to a dense prefill's."""
    from kvmesh.kvcomm.reuse import Assembly
    from kvmesh.llm import GenerationRequest

    prompt = list(ids_of(tiny, "The fox jumps over the lazy dog while the cat sleeps on a mat."))
    other = list(ids_of(tiny, "Tell me about the sea."))
    _, exact = dense(tiny.model, prompt[:9])
    shape = (*exact.keys.shape[:2], len(prompt) + 16, exact.keys.shape[3])
    keys, values = exact.keys.new_zeros(shape), exact.values.new_zeros(shape)
    keys[:, :, :9], values[:, :, :9] = exact.keys, exact.values
    prefix = Assembly(keys, values, 9, tuple(prompt[:9]), prompt[9:])
    plain = tiny.generate_requests([GenerationRequest(prompt, 8), GenerationRequest(other, 8)])
    batch = tiny.new_batch()
    batch.submit(GenerationRequest(prompt, 8, prefix=prefix, keep_kv=True), "reused")
    batch.submit(GenerationRequest(other, 8, keep_kv=True), "other")
    done = {}
    while batch.has_work:
        done |= dict(batch.step())
    assert done["reused"].token_ids == plain[0].token_ids and done["other"].token_ids == plain[1].token_ids
    for name, ids in (("reused", prompt), ("other", other)):
        generation = done[name]
        fed = ids + generation.token_ids[:-1]
        _, reference = dense(tiny.model, fed)
        torch.testing.assert_close(generation.prompt_kv.keys, reference.slice(0, len(ids)).keys, atol=1e-4, rtol=1e-4)
        reply = generation.reply_kv
        assert (reply.start, reply.token_ids) == (len(ids), tuple(generation.token_ids[:-1]))
        torch.testing.assert_close(reply.values, reference.slice(len(ids)).values, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="leave at least one token to prefill"):
        GenerationRequest(prompt[:9], 4, prefix=prefix)
