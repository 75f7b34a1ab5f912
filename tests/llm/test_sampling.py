"""The sampler: no NaN for any accepted temperature, nucleus sampling keeps exactly the top mass, and rows that
cannot be sampled are named."""

import torch

from kvmesh.llm.sampling import _nucleus, choose_tokens, chosen_logprobs, unusable_rows


def test_a_tiny_or_huge_temperature_samples_without_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0, -50.0]] * 4)
    generator = torch.Generator().manual_seed(0)
    tiny = choose_tokens(logits, torch.full((4,), 1e-40), generator)
    assert tiny.tolist() == [1, 1, 1, 1]  # one-hot on the best token: before the shift this was inf/inf = NaN
    huge = torch.stack([choose_tokens(logits[:1], torch.tensor([1e30]), generator) for _ in range(200)])
    assert set(huge.flatten().tolist()) == {0, 1, 2, 3}  # about uniform


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert _nucleus(probs, torch.tensor([0.7])).tolist() == [[0.625, 0.375, 0.0, 0.0]]
    assert _nucleus(probs, torch.tensor([0.8])).tolist() == [[0.625, 0.375, 0.0, 0.0]]  # 0.5 + 0.3 reaches 0.8
    assert _nucleus(probs, torch.tensor([0.0])).tolist() == [[1.0, 0.0, 0.0, 0.0]]  # top_p 0: greedy
    kept = _nucleus(probs[:, [2, 0, 3, 1]], torch.tensor([0.7]))  # order in the vocabulary does not matter
    torch.testing.assert_close(kept, torch.tensor([[0.0, 0.625, 0.0, 0.375]]))


def test_top_p_zero_is_greedy_at_any_temperature():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    draws = choose_tokens(logits, torch.full((8,), 1.5), torch.Generator().manual_seed(2), torch.zeros(8))
    assert draws.tolist() == logits.argmax(-1).tolist()


def test_unusable_rows_are_nan_posinf_or_all_minus_inf():
    logits = torch.zeros(4, 3)
    logits[0, 1], logits[1, 2], logits[2] = float("nan"), float("inf"), float("-inf")
    logits[3, 0] = float("-inf")  # one suppressed token (min_tokens' end of sequence) is fine
    assert unusable_rows(logits).tolist() == [True, True, True, False]


def test_chosen_logprobs_are_the_models_log_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    expected = torch.log_softmax(logits, -1)[0, 2]
    assert chosen_logprobs(logits, torch.tensor([2])).item() == expected.item()
