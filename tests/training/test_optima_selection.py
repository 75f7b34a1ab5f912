"""Selection for iSFT: the best rollout per task above a threshold, the top share overall, deterministic ties."""

import random

import pytest

from kvmesh.training.optima import RewardParts, Rollout, ranked, select_best, top_share


def scored(task: str, sample: int, total: float, tokens: int = 100) -> Rollout:
    """A hand-made rollout whose reward is `total`."""
    rollout = Rollout(task, "Q?", sample, 0, ["a"], [], "x", 1.0, tokens, 0)
    rollout.parts = RewardParts(1.0, tokens, 100.0, 0.5 * tokens / 100, 0.0, {}, total)
    return rollout


def key(rollouts):
    return [(r.task_id, r.sample) for r in rollouts]


def test_the_best_rollout_of_each_task_is_kept_when_it_clears_the_threshold():
    rollouts = [
        scored("t1", 0, 0.2),
        scored("t1", 1, 0.7),
        scored("t2", 0, 0.1),
        scored("t2", 1, 0.3),
        scored("t3", 0, 0.9),
        scored("t3", 1, -0.4),
    ]
    assert key(select_best(rollouts, threshold=0.5)) == [("t1", 1), ("t3", 0)]
    assert key(select_best(rollouts, threshold=0.3)) == [("t1", 1), ("t2", 1), ("t3", 0)]  # at the threshold: kept
    assert select_best(rollouts, threshold=1.0) == []


def test_ties_go_to_fewer_tokens_then_the_lower_sample_whatever_the_input_order():
    rollouts = [scored("t1", 2, 0.5, tokens=80), scored("t1", 0, 0.5, tokens=120), scored("t1", 1, 0.5, tokens=80)]
    for seed in range(5):
        shuffled = list(rollouts)
        random.Random(seed).shuffle(shuffled)
        assert key(select_best(shuffled, 0.0)) == [("t1", 1)]
        assert key(ranked(shuffled)) == [("t1", 1), ("t1", 2), ("t1", 0)]


def test_the_top_share_is_the_best_rounded_up_share_by_reward():
    rollouts = [scored(f"t{i}", 0, total) for i, total in enumerate([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0])]
    kept = top_share(rollouts, 0.7)
    assert [r.total for r in kept] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]  # 7 of 10, not 8 (0.7 · 10 in floats)
    assert len(top_share(rollouts[:3], 0.5)) == 2 and len(top_share(rollouts[:1], 0.1)) == 1
    assert top_share([], 0.7) == []
    with pytest.raises(ValueError, match="share"):
        top_share(rollouts, 0.0)


def test_an_unscored_rollout_is_an_error_not_a_zero():
    unscored = Rollout("t1", "Q?", 0, 0, ["a"], [], "x", 1.0, 10, 0)
    with pytest.raises(ValueError, match="score_rollouts first"):
        select_best([unscored, scored("t1", 1, 0.5)], 0.0)
