import pytest
import torch

from kvmesh.llm.base import ContextLengthError, GenerationRequest

PROMPTS = [
    "What is the capital of France?",
    "Write one short sentence about the sea.",
    "List three colours.",
    "What is 7 times 6? Answer with a number.",
]


def _rendered(lm):
    return [lm.render([("user", p)]) for p in PROMPTS]


def _assert_batched_equals_unbatched(lm, max_new_tokens):
    prompts = _rendered(lm)
    batched = lm.generate(prompts, max_new_tokens=max_new_tokens)
    for prompt, row in zip(prompts, batched, strict=True):
        alone = lm.generate([prompt], max_new_tokens=max_new_tokens)[0]
        assert row.token_ids == alone.token_ids
        assert row.text == alone.text


def test_batched_equals_unbatched_tiny(tiny):
    _assert_batched_equals_unbatched(tiny, 24)


@pytest.mark.slow
def test_batched_equals_unbatched_smollm(smollm):
    _assert_batched_equals_unbatched(smollm, 32)


def test_token_counts_come_from_the_real_ids(tiny):
    prompts = _rendered(tiny)
    for prompt, row in zip(prompts, tiny.generate(prompts, max_new_tokens=[3, 5, 7, 9]), strict=True):
        assert row.prompt_tokens == len(tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert row.completion_tokens == len(row.token_ids)
        assert row.text == tiny.tokenizer.decode(row.token_ids, skip_special_tokens=True)
    assert [r.completion_tokens for r in tiny.generate(prompts, max_new_tokens=[3, 5, 7, 9])] == [3, 5, 7, 9]


@pytest.mark.slow
def test_eos_ends_a_row_and_is_counted(smollm):
    row = smollm.generate([smollm.render([("user", "Say hi.")])], max_new_tokens=64)[0]
    assert row.finish_reason == "eos"
    assert row.token_ids[-1] in smollm.eos_ids
    assert "<|im_end|>" not in row.text


def test_stop_strings_cut_the_text(tiny):
    prompt = _rendered(tiny)[0]
    free = tiny.generate([prompt], max_new_tokens=20)[0]
    stop = free.text[len(free.text) // 2 :][:3]  # a piece of what greedy decoding will produce
    cut = tiny.generate([prompt], max_new_tokens=20, stop=[stop])[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and free.text.startswith(cut.text)
    assert len(cut.token_ids) < len(free.token_ids)


def test_sampling_is_seeded(tiny):
    prompts = _rendered(tiny)
    a = tiny.generate(prompts, max_new_tokens=12, temperature=1.0, seed=7)
    b = tiny.generate(prompts, max_new_tokens=12, temperature=1.0, seed=7)
    c = tiny.generate(prompts, max_new_tokens=12, temperature=1.0, seed=8)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_mixed_greedy_and_sampled_rows(tiny):
    prompts = _rendered(tiny)[:2]
    greedy = tiny.generate([prompts[0]], max_new_tokens=10)[0]
    mixed = tiny.generate(prompts, max_new_tokens=10, temperature=[0.0, 1.0], seed=3)
    assert mixed[0].token_ids == greedy.token_ids


def test_prefill_only_rows_expose_the_cache_and_match_generation(tiny):
    from kvmesh.llm.base import GenerationRequest

    ids = tiny.encode_prompt(_rendered(tiny)[1])
    prefilled, generated = tiny.generate_requests(
        [GenerationRequest(ids, 0, keep_kv=True), GenerationRequest(ids, 1, keep_kv=True)]
    )
    config = tiny.model.config
    shape = (config.num_hidden_layers, config.num_key_value_heads, len(ids), config.head_dim)
    assert tuple(prefilled.prompt_kv.keys.shape) == shape
    assert (prefilled.finish_reason, prefilled.token_ids, prefilled.prompt_tokens) == ("prefill", [], len(ids))
    torch.testing.assert_close(prefilled.prompt_kv.keys, generated.prompt_kv.keys)
    torch.testing.assert_close(prefilled.prompt_kv.values, generated.prompt_kv.values)


def test_bad_requests_are_rejected(tiny):
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny.generate(["hi"], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        tiny.generate(["hi"], temperature=-1.0)
    with pytest.raises(ValueError, match="one value per prompt"):
        tiny.generate(["a", "b"], max_new_tokens=[1, 2, 3])


@pytest.mark.parametrize("long_first", [True, False])
def test_rows_join_a_running_batch_and_match_solo_runs(tiny, long_first):
    from kvmesh.llm.base import GenerationRequest

    prompts = _rendered(tiny)
    wide = GenerationRequest(tiny.encode_prompt(prompts[1] + prompts[2] + prompts[3]), max_new_tokens=4)
    narrow = GenerationRequest(tiny.encode_prompt(prompts[0]), max_new_tokens=4)
    first, second = (wide, narrow) if long_first else (narrow, wide)
    first.max_new_tokens = 12  # still decoding when the second row joins
    solo = [tiny.generate_requests([r])[0].token_ids for r in (first, second)]
    batch = tiny.new_batch()
    batch.submit(first, "first")
    finished, order = {}, []
    for _ in range(4):
        assert batch.step() == []
    batch.submit(second, "second")
    while batch.has_work:
        for tag, generation in batch.step():
            finished[tag] = generation
            order.append(tag)
    assert order == ["second", "first"]  # the late row finished first and left; the other went on alone
    assert [finished["first"].token_ids, finished["second"].token_ids] == solo


def test_rows_wait_for_a_free_slot(tiny, monkeypatch):
    prompts = _rendered(tiny)
    limits = [3, 9, 5, 7]
    free = tiny.generate(prompts, max_new_tokens=limits)
    monkeypatch.setattr(tiny, "max_batch_size", 2)
    queued = tiny.generate(prompts, max_new_tokens=limits)
    assert [r.token_ids for r in queued] == [r.token_ids for r in free]


def test_length_buckets_bound_padding():
    from kvmesh.llm.layout import length_buckets

    lengths = [100, 12, 98, 10, 11, 300, 105]
    buckets = length_buckets(lengths, max_padding=0.1)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for bucket in buckets:
        real = sum(lengths[i] for i in bucket)
        assert len(bucket) * max(lengths[i] for i in bucket) - real <= 0.1 * real
    assert len(buckets) == 3  # {10, 11, 12}, {98, 100, 105}, {300}


def test_sliding_window_model_rows_finish_at_different_times(sliding):
    from kvmesh.llm.cache import can_merge

    assert not can_merge(sliding.model.config)
    prompts = [sliding.render([("user", q * 3)]) for q in PROMPTS]  # longer than the window
    limits = [6, 20, 3, 12]
    batched = sliding.generate(prompts, max_new_tokens=limits)
    alone = [sliding.generate([p], max_new_tokens=n)[0] for p, n in zip(prompts, limits, strict=True)]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert [r.completion_tokens for r in batched] == limits


def test_multibyte_stop_strings_are_found(tiny):
    from kvmesh.llm.base import GenerationRequest
    from kvmesh.llm.rows import Row

    runner = tiny._runner
    for stop in ("𝄞𝄞", "日本", "END"):
        row = Row(GenerationRequest([1], stop=stop), tag=0)
        row.generated = tiny.tokenizer("some text " + stop + " more", add_special_tokens=False)["input_ids"]
        assert runner.stop_hit(row) and row.text == "some text "


def test_stop_arguments_are_normalised(tiny):
    from kvmesh import Agent
    from kvmesh.llm.base import normalize_stop

    assert normalize_stop("END") == ("END",) and normalize_stop(None) == () and normalize_stop(["a", "b"]) == ("a", "b")
    assert Agent("a", model="tiny-random", stop="END").stop == ("END",)
    with pytest.raises(ValueError, match="non-empty strings"):
        normalize_stop([""])
    with pytest.raises(ValueError, match="agent 'a': stop strings must be non-empty strings, got 5"):
        Agent("a", model="tiny-random", stop=[5])


def test_a_bare_prompt_is_refused_with_advice(tiny):
    from langchain_core.messages import HumanMessage

    with pytest.raises(TypeError, match=r"generate\(\[text\]\)"):
        tiny.generate("hello")
    with pytest.raises(TypeError, match="bare transcript"):
        tiny.generate([HumanMessage("hi")])
    with pytest.raises(ValueError, match="max_batch_size"):
        type(tiny)(tiny.model, tiny.tokenizer, "x", max_batch_size=0)


def test_engine_rows_on_a_prebuilt_cache_and_kept_caches(tiny):
    """A row that arrives with an exact prebuilt prefix decodes like a plain one, batched with others, and
    rows that ask for it return their prompt's cache and their reply's cache, equal to a dense prefill's."""
    from kvmesh.llm.base import GenerationRequest
    from kvmesh.llm.cache import cache_argument, new_cache, read_columns
    from kvmesh.llm.prefix import PrefixCache
    from kvmesh.llm.segment import KVSegment

    def ids_of(text):
        return list(tiny.tokenizer(text, add_special_tokens=False)["input_ids"])

    def dense(model, ids):
        """(None, the prompt cache as a segment) of a dense prefill."""
        cache = new_cache(model.config)
        with torch.inference_mode():
            model(input_ids=torch.tensor([list(ids)]), **cache_argument(model, cache))
        return None, KVSegment(*read_columns(cache, 0, 0, len(ids)), 0, tuple(ids))

    prompt = ids_of("The fox jumps over the lazy dog while the cat sleeps on a mat.")
    other = ids_of("Tell me about the sea.")
    _, exact = dense(tiny.model, prompt[:9])
    shape = (*exact.keys.shape[:2], len(prompt) + 16, exact.keys.shape[3])
    keys, values = exact.keys.new_zeros(shape), exact.values.new_zeros(shape)
    keys[:, :, :9], values[:, :, :9] = exact.keys, exact.values
    prefix = PrefixCache(keys, values, 9, tuple(prompt[:9]), prompt[9:])
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


def test_prefill_only_rows_on_prefixes_fill_their_buffers_when_prefilled_together(tiny, forwards):
    """A prefill-only row on a prefix exists to write its rest into the prefix's buffers (cache assembly's own
    text); rows prefilled together in one pass, on a stacked copy of their prefixes, must still do so."""
    from kvmesh.llm.prefix import PrefixCache

    prompts = [tiny.encode_prompt(p) for p in _rendered(tiny)[:3]]
    dense = [g.prompt_kv for g in tiny.generate_requests([GenerationRequest(ids, 0, keep_kv=True) for ids in prompts])]
    pairs = enumerate(zip(prompts, dense, strict=True))
    prefixes = [PrefixCache.of(full.slice(0, 4 + i), ids[4 + i :]) for i, (ids, full) in pairs]
    for prefix in prefixes:  # what the rows must overwrite
        prefix.keys[:, :, prefix.length :], prefix.values[:, :, prefix.length :] = float("nan"), float("nan")
    forwards.clear()
    rows = [GenerationRequest(ids, 0, prefix=prefix) for ids, prefix in zip(prompts, prefixes, strict=True)]
    assert all(g.finish_reason == "prefill" for g in tiny.generate_requests(rows))
    assert len(forwards) == 1  # one forward pass for the three
    for prefix, full in zip(prefixes, dense, strict=True):
        torch.testing.assert_close(prefix.keys, full.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(prefix.values, full.values, atol=1e-4, rtol=1e-4)


def test_prefill_only_rows_join_the_running_batch_and_leave_after_their_prefill(tiny, forwards):
    from kvmesh.llm.base import GenerationRequest

    prompts = [tiny.encode_prompt(p) for p in _rendered(tiny)]
    alone = tiny.generate_requests([GenerationRequest(prompts[0], 4)])[0]
    forwards.clear()
    batch = tiny.new_batch()
    batch.submit(GenerationRequest(prompts[0], 4), "turn")
    for i, ids in enumerate(prompts[1:]):
        batch.submit(GenerationRequest(ids, 0, keep_kv=True), f"cache {i}")
    first = dict(batch.step())  # one step admits all four; the prefill-only rows are done at once
    assert set(first) == {"cache 0", "cache 1", "cache 2"} and all(g.finish_reason == "prefill" for g in first.values())
    done = {}
    while batch.has_work:
        done |= dict(batch.step())
    assert done["turn"].token_ids == alone.token_ids  # batched with them, the turn reads as if alone
    assert [rows for rows, tokens in forwards if tokens == 1] == [1, 1, 1]  # only the turn decodes


def test_min_new_tokens_keeps_a_row_from_ending(smollm):
    from kvmesh.llm.base import GenerationRequest

    prompt = smollm.encode_prompt(smollm.render([("user", "Say hi.")]))
    free = smollm.generate_requests([GenerationRequest(prompt, 64)])[0]
    assert free.finish_reason == "eos" and len(free.token_ids) < 40
    held = smollm.generate_requests([GenerationRequest(prompt, 40, min_new_tokens=40)])[0]
    assert held.finish_reason == "length" and len(held.token_ids) == 40
    assert not set(held.token_ids) & smollm.eos_ids
    with pytest.raises(ValueError, match="min_new_tokens must be in"):
        GenerationRequest(prompt, 4, min_new_tokens=5)


def test_prompts_are_checked_against_the_context_and_replies_end_at_its_last_position(tiny, forwards):
    assert tiny.context_length == 4096
    with pytest.raises(ContextLengthError, match="a prompt is 4,096 tokens but the model reads at most 4,096"):
        tiny.new_batch().submit(GenerationRequest([7] * 4096, max_new_tokens=4), "row")
    assert forwards == []  # refused before any forward pass
    tiny.new_batch().submit(GenerationRequest([7] * 4096, max_new_tokens=0), "cache")  # a prefill may fill it
    (near_the_end,) = tiny.generate_requests([GenerationRequest([7] * 4090, max_new_tokens=50)])
    assert (near_the_end.completion_tokens, near_the_end.finish_reason) == (6, "length")
