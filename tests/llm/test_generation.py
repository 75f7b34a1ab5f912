import pytest
import torch

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


def test_prefill_exposes_the_cache_and_matches_generation(tiny):
    prompt = _rendered(tiny)[1]
    state = tiny.prefill(prompt)
    layer = state.cache.layers[0]
    config = tiny.model.config
    assert tuple(layer.keys.shape) == (1, config.num_key_value_heads, len(state.token_ids), config.head_dim)
    first = tiny.generate([prompt], max_new_tokens=1)[0].token_ids[0]
    assert int(torch.argmax(state.next_token_logits)) == first


def test_bad_requests_are_rejected(tiny):
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny.generate(["hi"], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        tiny.generate(["hi"], temperature=-1.0)
    with pytest.raises(ValueError, match="one value per prompt"):
        tiny.generate(["a", "b"], max_new_tokens=[1, 2, 3])


@pytest.mark.parametrize("long_first", [True, False])
def test_rows_join_a_running_batch_and_match_solo_runs(tiny, long_first):
    from kvmesh.llm.generation import GenerationRequest

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
    from kvmesh.llm.generation import length_buckets

    lengths = [100, 12, 98, 10, 11, 300, 105]
    buckets = length_buckets(lengths, max_padding=0.1)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for bucket in buckets:
        real = sum(lengths[i] for i in bucket)
        assert len(bucket) * max(lengths[i] for i in bucket) - real <= 0.1 * real
    assert len(buckets) == 3  # {10, 11, 12}, {98, 100, 105}, {300}


def test_sliding_window_model_rows_finish_at_different_times(sliding):
    from kvmesh.kvcomm.cache import can_merge

    assert not can_merge(sliding.model.config)
    prompts = [sliding.render([("user", q * 3)]) for q in PROMPTS]  # longer than the window
    limits = [6, 20, 3, 12]
    batched = sliding.generate(prompts, max_new_tokens=limits)
    alone = [sliding.generate([p], max_new_tokens=n)[0] for p, n in zip(prompts, limits, strict=True)]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert [r.completion_tokens for r in batched] == limits


def test_multibyte_stop_strings_are_found(tiny):
    from kvmesh.llm.generation import GenerationRequest, _Row

    decoder = tiny._decoder
    for stop in ("𝄞𝄞", "日本", "END"):
        row = _Row(GenerationRequest([1], stop=stop), tag=0)
        row.generated = tiny.tokenizer("some text " + stop + " more", add_special_tokens=False)["input_ids"]
        assert decoder.stop_hit(row) and row.text == "some text "


def test_stop_arguments_are_normalised(tiny):
    from kvmesh import Agent
    from kvmesh.llm.generation import normalize_stop

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
