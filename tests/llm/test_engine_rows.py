"""One row's trouble stays that row's: a row whose logits are not numbers fails alone, a cancelled row leaves
without touching the others, and per-row settings (nucleus sampling, log-probabilities) act on their own row."""

import pytest
import torch

from kvmesh.llm.base import GenerationRequest, RowError
from kvmesh.llm.prefix import PrefixCache


def _ids(lm, text):
    return lm.encode_prompt(lm.render([("user", text)]))


def _run(batch):
    done = {}
    while batch.has_work:
        done |= dict(batch.step())
    return done


def _poisoned(lm, ids, cut=6):
    """A prefix cache of the prompt's first `cut` positions full of NaN: the row's attention reads them."""
    config = lm.model.config
    shape = (config.num_hidden_layers, config.num_key_value_heads, len(ids) + 16, config.head_dim)
    keys = torch.full(shape, float("nan"))
    return PrefixCache(keys, keys.clone(), cut, tuple(ids[:cut]), ids[cut:])


def test_a_row_whose_logits_are_not_numbers_fails_alone(tiny):
    good = [_ids(tiny, "Name a colour."), _ids(tiny, "Count to three.")]
    bad = _ids(tiny, "Tell me about the sea.")
    alone = tiny.generate_requests([GenerationRequest(ids, 8) for ids in good])
    batch = tiny.new_batch()
    batch.submit(GenerationRequest(good[0], 8), "a")
    batch.submit(GenerationRequest(bad, 8, prefix=_poisoned(tiny, bad)), "bad")
    batch.submit(GenerationRequest(good[1], 8, temperature=1.0), "b")  # a sampled row beside it samples fine
    done = _run(batch)
    assert done["bad"].finish_reason == "error" and "not numbers" in done["bad"].error
    with pytest.raises(RowError, match="not numbers"):
        done["bad"].check()
    assert done["a"].token_ids == alone[0].token_ids and done["a"].error is None
    assert done["b"].finish_reason in ("eos", "length") and len(done["b"].token_ids) > 0


def test_in_process_callers_raise_the_failed_rows_error(tiny):
    bad = _ids(tiny, "Tell me about the sea.")
    with pytest.raises(RowError, match="not numbers"):
        tiny.generate_requests([GenerationRequest(bad, 4, prefix=_poisoned(tiny, bad))])


def test_cancelled_rows_leave_without_a_result_and_the_others_are_untouched(tiny):
    prompts = [_ids(tiny, text) for text in ("Name a colour.", "Count to three.", "Say hi.")]
    alone = tiny.generate_requests([GenerationRequest(prompts[0], 12, min_new_tokens=12)])[0]
    batch = tiny.new_batch()
    batch.max_rows = 2  # the third row waits for a slot
    batch.submit(GenerationRequest(prompts[0], 12, min_new_tokens=12), "kept")
    batch.submit(GenerationRequest(prompts[1], 10**6, min_new_tokens=10**5), "running")
    batch.submit(GenerationRequest(prompts[2], 12), "waiting")
    done = dict(batch.step()) | dict(batch.step())  # both running rows are decoding
    batch.cancel("waiting")
    batch.cancel("running")
    batch.cancel("never submitted")  # ignored
    done |= _run(batch)  # would run for 10**5 tokens if the cancel did nothing
    assert set(done) == {"kept"} and done["kept"].token_ids == alone.token_ids
    assert batch.cancelled == set() and not batch.waiting


def test_logprobs_are_the_models_own_for_each_chosen_token(tiny):
    ids = _ids(tiny, "Name a colour.")
    (generation,) = tiny.generate_requests([GenerationRequest(ids, 6, logprobs=True)])
    fed = ids + generation.token_ids[:-1]
    with torch.inference_mode():
        logits = tiny.model(input_ids=torch.tensor([fed])).logits[0, len(ids) - 1 :]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(generation.token_ids)[:, None])
    assert generation.logprobs == pytest.approx(expected.squeeze(-1).tolist(), abs=1e-4)
    (plain,) = tiny.generate_requests([GenerationRequest(ids, 6)])
    assert plain.logprobs is None and plain.token_ids == generation.token_ids


def test_top_p_zero_samples_the_greedy_reply(tiny):
    ids = _ids(tiny, "Name a colour.")
    (greedy,) = tiny.generate_requests([GenerationRequest(ids, 10)])
    (nucleus,) = tiny.generate_requests([GenerationRequest(ids, 10, temperature=1.5, top_p=0.0)], seed=0)
    (sampled,) = tiny.generate_requests([GenerationRequest(ids, 10, temperature=1.5)], seed=0)
    assert nucleus.token_ids == greedy.token_ids and sampled.token_ids != greedy.token_ids


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"temperature": float("inf")}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p")],
)
def test_settings_the_sampler_cannot_handle_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        GenerationRequest([1, 2], 4, **settings)


def test_a_seeded_row_samples_the_same_alone_or_batched_and_joining_late(tiny):
    ids = _ids(tiny, "Tell me a story.")
    (alone,) = tiny.generate_requests([GenerationRequest(ids, 12, temperature=1.0, seed=5)], seed=0)
    batch = tiny.new_batch(seed=99)  # another shared generator, other rows drawing from it first
    batch.submit(GenerationRequest(_ids(tiny, "Count to ten."), 20, temperature=1.0), "other")
    batch.step(), batch.step()
    batch.submit(GenerationRequest(ids, 12, temperature=1.0, seed=5), "seeded")
    assert _run(batch)["seeded"].token_ids == alone.token_ids
    (reseeded,) = tiny.generate_requests([GenerationRequest(ids, 12, temperature=1.0, seed=6)], seed=0)
    assert reseeded.token_ids != alone.token_ids  # the seed decides: the equality above can fail
