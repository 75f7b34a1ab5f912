"""Latent thoughts: the realignment map, and rows that think in the running batch exactly as a plain loop would."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kvmesh import LocalLM
from kvmesh.llm.base import GenerationRequest, run_requests
from kvmesh.llm.thoughts import THOUGHT, Realignment


def _prompt(lm, text: str) -> list[int]:
    return lm.encode_prompt(lm.render([("user", text)]))


def test_a_thinking_row_caches_what_a_plain_loop_computes(tiny, latent_loop):
    ids = _prompt(tiny, "Bo works as a judge. What is Bo's job?")
    (row,) = run_requests(tiny, [GenerationRequest(ids, 0, keep_kv=True, latent_steps=3)])
    keys, values, _ = latent_loop(tiny, ids, 3)
    assert row.finish_reason == "prefill" and row.token_ids == [] and row.latent_steps == 3
    assert row.prompt_kv.token_ids == (*ids, THOUGHT, THOUGHT, THOUGHT)
    assert torch.allclose(row.prompt_kv.keys, keys, atol=1e-5)
    assert torch.allclose(row.prompt_kv.values, values, atol=1e-5)
    plain = run_requests(tiny, [GenerationRequest(ids, 0, keep_kv=True)])[0].prompt_kv
    assert not torch.allclose(row.prompt_kv.keys[:, :, -1], plain.keys[:, :, -1])  # the thoughts are new positions
    assert torch.equal(row.prompt_kv.keys[:, :, : len(ids)], plain.keys)


def test_tokens_after_thoughts_follow_them(tiny, latent_loop):
    ids = _prompt(tiny, "List three colours.")
    (row,) = run_requests(tiny, [GenerationRequest(ids, 6, keep_kv=True, latent_steps=2)])
    _, _, generated = latent_loop(tiny, ids, 2, tokens=6)
    assert row.token_ids == generated
    assert row.latent_steps == 2 and len(row.prompt_kv) == len(ids) + 2
    assert row.reply_kv.start == len(ids) + 2  # the reply's cache starts after the thoughts
    without = run_requests(tiny, [GenerationRequest(ids, 6)])[0]
    assert without.token_ids != row.token_ids  # the thoughts changed what follows


def test_thinking_rows_batch_with_token_rows_without_changing_either(tiny):
    texts = ["What is the capital of France?", "Write one short sentence about the sea.", "Hi."]
    plain = [GenerationRequest(_prompt(tiny, t), 8) for t in texts]
    thinking = GenerationRequest(_prompt(tiny, "Tom has a cat. What does Tom have?"), 0, keep_kv=True, latent_steps=4)
    batched = run_requests(tiny, [plain[0], thinking, *plain[1:]])
    alone = [run_requests(tiny, [request])[0] for request in [plain[0], thinking, *plain[1:]]]
    for together, solo in zip(batched, alone, strict=True):
        assert together.token_ids == solo.token_ids
    # batched matmuls round differently (entries up to ~5 here); a wrong thought would differ by whole units
    assert torch.allclose(batched[1].prompt_kv.keys, alone[1].prompt_kv.keys, atol=1e-3)
    assert torch.allclose(batched[1].prompt_kv.values, alone[1].prompt_kv.values, atol=1e-3)


def test_tied_embeddings_realign_by_norm_alone(tiny):
    realign = Realignment.of(tiny.model)
    weight = tiny.model.get_input_embeddings().weight
    assert torch.allclose(realign.matrix, torch.eye(weight.shape[1]), atol=1e-3)
    assert realign.norm == pytest.approx(float(weight.detach().norm(dim=-1).mean()), rel=1e-5)
    hidden = torch.randn(3, weight.shape[1])
    out = realign(hidden)
    assert torch.allclose(out.norm(dim=-1), torch.full((3,), realign.norm), rtol=1e-5)
    assert torch.allclose(torch.nn.functional.cosine_similarity(out, hidden, dim=-1), torch.ones(3), atol=1e-4)


def test_untied_embeddings_realign_through_the_least_squares_map():
    config = LlamaConfig(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    mixing = torch.randn(32, 32)
    with torch.no_grad():  # input embeddings an exact linear image of the output ones: the map must find it
        model.get_input_embeddings().weight.copy_(model.get_output_embeddings().weight @ mixing)
    realign = Realignment.of(model)
    assert torch.allclose(realign.matrix, mixing, atol=1e-3)


def test_a_sliding_window_model_refuses_thoughts(sliding):
    ids = _prompt(sliding, "Hi.")
    with pytest.raises(ValueError, match="sliding-window"):
        sliding.new_batch().submit(GenerationRequest(ids, 0, keep_kv=True, latent_steps=2), 0)


def test_bad_latent_steps_are_refused():
    with pytest.raises(ValueError, match="latent_steps"):
        GenerationRequest([1, 2], latent_steps=-1)


def test_a_model_built_here_thinks_too(tiny):
    """A LocalLM around an in-memory model (no registry folder) builds its realignment from its own weights."""
    lm = LocalLM(tiny.model, tiny.tokenizer, "tiny-in-memory")
    ids = _prompt(lm, "Hi.")
    (row,) = run_requests(lm, [GenerationRequest(ids, 0, keep_kv=True, latent_steps=1)])
    assert len(row.prompt_kv) == len(ids) + 1


def test_a_thinking_row_draws_nothing_from_the_batchs_sampling(tiny):
    """A sampled row's tokens depend on the batch's seed alone, not on a thinking row beside it."""
    sampled = GenerationRequest(_prompt(tiny, "Write one short sentence about the sea."), 8, temperature=1.0)
    thinking = GenerationRequest(_prompt(tiny, "Hi."), 0, 1.0, keep_kv=True, latent_steps=4)
    alone = run_requests(tiny, [sampled], seed=3)[0].token_ids
    beside = run_requests(tiny, [sampled, thinking], seed=3)[0].token_ids
    assert beside == alone
