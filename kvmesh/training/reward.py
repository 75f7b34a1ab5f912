"""The one utility every learning loop maximises: a task's score, less what its run cost.

    utility = score − λ · cost / normaliser

`score` is the benchmark's reward for the team's answer (in [0, 1]); `cost` what the task's run spent, in the
unit the user pays (`COSTS`, read from the run's own usage: tokens counted by the model's tokenizer, seconds
measured by the runtime); λ the cost weight and `normaliser` the cost that costs λ: designers measure it on the
team's own graph, Optima on the most a rollout of the task spent.

Caveat: `time` is each model call's own latency, added up over the task's calls (cache assembly included). In a
batched run a call's latency includes the steps of the rows batched beside it, so a task's time depends on its
batch (its size, the graphs beside it) and on the machine and its load: it is the time the task's calls took, not
a share of the batch's compute, and it is not reproducible run to run. Measure the normaliser and train in
batches of one size, on an otherwise idle machine; the token costs are exact and reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmesh.agents.usage import Usage

COSTS = ("tokens", "generated", "time", "kv-bytes")
COST_UNITS = {"tokens": "tokens", "generated": "generated tokens", "time": "s", "kv-bytes": "KV bytes"}


def task_cost(usage: Usage, cost: str = "tokens") -> float:
    """What a task's run cost in `cost`'s unit, from its total usage: prompt and completion tokens (`tokens`),
    completion tokens (`generated`), seconds of its model calls (`time`), or bytes of KV cache its latent
    channels moved into receivers (`kv-bytes`)."""
    if cost == "tokens":
        return float(usage.total_tokens)
    if cost == "generated":
        return float(usage.output_tokens)
    if cost == "time":
        return usage.call_time_s
    if cost == "kv-bytes":
        return float(usage.kv_bytes)
    raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")


def utility(score: float, cost: float, weight: float, normaliser: float) -> float:
    """score − weight · cost / normaliser (means in, mean out: the utility is linear)."""
    if normaliser <= 0:
        raise ValueError(f"the cost normaliser must be positive, got {normaliser}")
    return score - weight * cost / normaliser


def utilities(scored: Sequence[tuple[float, float]], weight: float, normaliser: float) -> list[float]:
    """`utility` of each (score, cost) pair."""
    return [utility(score, cost, weight, normaliser) for score, cost in scored]
