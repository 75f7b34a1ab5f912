"""The one utility every learning loop maximises: a task's score, less what its tokens cost.

    utility = score − λ · tokens / normaliser

`score` is the benchmark's reward for the team's answer (in [0, 1]), `tokens` the team's prompt and completion
tokens for that task (counted by the model's tokenizer), λ the token weight and `normaliser` the tokens that
cost λ: designers measure it on the team's own graph, Optima on the most a rollout of the task spent.
"""

from __future__ import annotations

from collections.abc import Sequence


def utility(score: float, tokens: float, token_weight: float, normaliser: float) -> float:
    """score − token_weight · tokens / normaliser (means in, mean out: the utility is linear)."""
    if normaliser <= 0:
        raise ValueError(f"the token normaliser must be positive, got {normaliser}")
    return score - token_weight * tokens / normaliser


def utilities(scored: Sequence[tuple[float, float]], token_weight: float, normaliser: float) -> list[float]:
    """`utility` of each (score, tokens) pair."""
    return [utility(score, tokens, token_weight, normaliser) for score, tokens in scored]
