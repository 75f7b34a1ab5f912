"""Which scored rollouts iSFT trains on (Optima): the best rollout per task above a threshold, then the top share.

    kept = top_share(select_best(rollouts, threshold), share)        Optima: 10 rollouts per task, top 70%

Ranking (both functions): higher reward first; on a tie, fewer tokens (the cheaper conversation says the same),
then the lower sample index, then the earlier position in the input. So the same rollouts always give the same
selection, whatever order equal rewards arrive in.

Caveat: rollouts must be scored first (`score_rollouts`); an unscored one is an error, not a zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kvmesh.training.optima.rollout import Rollout


def ranked(rollouts: Sequence[Rollout]) -> list[Rollout]:
    """`rollouts` best first, ties broken as the module docstring says."""
    order = sorted(range(len(rollouts)), key=lambda i: (-rollouts[i].total, rollouts[i].tokens, rollouts[i].sample, i))
    return [rollouts[i] for i in order]


def select_best(rollouts: Sequence[Rollout], threshold: float) -> list[Rollout]:
    """Per task (in order of first appearance), its best rollout, when its reward is at least `threshold`."""
    by_task: dict[str, list[Rollout]] = {}
    for rollout in rollouts:
        by_task.setdefault(rollout.task_id, []).append(rollout)
    best = [ranked(group)[0] for group in by_task.values()]
    return [rollout for rollout in best if rollout.total >= threshold]


def top_share(rollouts: Sequence[Rollout], share: float) -> list[Rollout]:
    """The best ceil(share · n) of `rollouts` by reward, best first."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return ranked(rollouts)[: math.ceil(round(share * len(rollouts), 9))]  # 0.7 · 10 is 7.000000000000001
