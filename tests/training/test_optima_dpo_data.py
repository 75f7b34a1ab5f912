"""iDPO data: branching at a turn replays every earlier turn exactly and samples the rest; pairs are best against
worst child of a branch point, after near-duplicates are removed."""

import json

import pytest

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.training.optima import (
    RewardConfig,
    RewardParts,
    Rollout,
    RolloutTurn,
    branch,
    branch_points,
    branches,
    deduplicate,
    near_duplicate,
    preference_pairs,
    sample_rollouts,
    score_rollouts,
)

TASK = Task("In which city does Mira's brother live?", id="q1", shards=["Tavo lives in Orvik.", "Mira is kind."])


def member(name):
    return Agent(name, model="tiny-random", max_new_tokens=10, stop=("e",))


def joined_team(**settings):
    """a and b speak in parallel, c reads both, then a decision maker: a graph that is not a chain."""
    graph = CommGraph(["a", "b", "c"], [("a", "c"), ("b", "c")])
    return Team([member("a"), member("b"), member("c")], graph, decision={"max_new_tokens": 4}, **settings)


def score(task, result):
    assert task is TASK  # children are scored against the task the rollout came from, with its own id
    return float("Orvik" in (result.answer or ""))


@pytest.fixture(scope="module")
def parent():
    (rollout,) = sample_rollouts(joined_team(), [TASK], 1, 1.0, 0, score=score)
    return rollout


def test_branching_replays_every_earlier_turn_exactly_and_samples_the_rest(parent, forwards):
    children = branch(joined_team(), parent, 2, 4, 1.0, 3, task=TASK, score=score)
    assert len(children) == 4 and [c.sample for c in children] == [0, 1, 2, 3]
    prefills = sum(rows for rows, tokens in forwards if tokens > 1)
    assert prefills == 4 * 2  # c and the decision maker per child: the replayed a and b made no model call
    for child in children:
        assert child.branched_at == 2 and child.parent_sample == parent.sample
        assert [(t.agent, t.round, t.reply) for t in child.turns[:2]] == [
            (t.agent, t.round, t.reply) for t in parent.turns[:2]
        ]
        assert child.turns[:2] == parent.turns[:2]  # the recorded turns, prompt ids and tokens included
        assert child.turns[2].agent == "c" and child.turns[2].prompt_ids == parent.turns[2].prompt_ids
        assert child.tokens == sum(t.prompt_tokens + t.completion_tokens for t in child.turns)
    assert len({c.turns[2].reply for c in children}) > 1  # sampling: the children differ at the branched turn
    again = branch(joined_team(), parent, 2, 4, 1.0, 3, task=TASK, score=score)
    assert [c.to_dict() for c in again] == [c.to_dict() for c in children]  # same seed, same children


def test_points_of_one_task_run_in_one_batch_each_with_its_own_replay(parent):
    assert branch_points(parent) == [0, 1, 2, 3]
    at_b, at_decision = branches(joined_team(), [(TASK, parent, 1), (TASK, parent, 3)], 3, 1.0, 0, score=score)
    for child in at_b:
        assert child.turns[0] == parent.turns[0] and child.turns[1].tool is None and len(child.turns) == 4
    for child in at_decision:
        assert child.turns[:3] == parent.turns[:3]
        assert child.turns[3].prompt_ids == parent.turns[3].prompt_ids
    assert len({c.turns[1].reply for c in at_b}) > 1


def test_under_a_budget_a_child_gets_what_the_parent_had_left_and_counts_its_prefix():
    team = joined_team(token_budget=2000)
    (rollout,) = sample_rollouts(team, [TASK], 1, 1.0, 0, score=score)
    prefix = sum(t.prompt_tokens + t.completion_tokens for t in rollout.turns[:3])
    tight = joined_team(token_budget=prefix + 60)  # the decision maker's prompt no longer fits
    children = branch(tight, rollout, 3, 2, 1.0, 0, task=TASK, score=score)
    for child in children:
        assert child.stop_reason == "budget" and len(child.turns) == 3
        assert child.tokens == prefix  # spent in the parent's prefix, never counted as zero
    score_rollouts(children, RewardConfig(readability_weight=0))
    assert all("stopped" in c.parts.penalties for c in children)
    with pytest.raises(ValueError, match="whole token budget"):
        branch(joined_team(token_budget=prefix), rollout, 3, 2, 1.0, 0, task=TASK, score=score)


def test_branching_needs_a_model_turn_and_the_rollouts_own_task(parent):
    with pytest.raises(ValueError, match="not a model's turn"):
        branch(joined_team(), parent, 9, 2, 1.0, 0, task=TASK, score=score)
    with pytest.raises(ValueError, match="question"):
        branch(joined_team(), parent, 1, 2, 1.0, 0, task=Task("Another?", id="q1"), score=score)


# --- pairs on hand-made children -------------------------------------------------------------------------------


def child(sample: int, reply: str, total: float, prompt=(5, 6, 7)) -> Rollout:
    """A child of task t1 branched at turn 1 whose turn 1 says `reply`, with reward `total`."""
    turns = [
        RolloutTurn("a", "member", 0, "p0", [1, 2], "Mira's brother is Tavo.", [3, 2], "eos", 2, 2),
        RolloutTurn("b", "member", 0, "p1", list(prompt), reply, [len(reply), 2], "eos", 3, 2),
    ]
    rollout = Rollout("t1", "Q?", sample, 0, ["a", "b"], turns, "x", 1.0, 5, 4, branched_at=1, parent_sample=0)
    rollout.parts = RewardParts(1.0, 9, 9.0, 0.5, 0.0, {}, total)
    return rollout


def test_near_duplicates_ignore_case_and_spacing_and_keep_the_first():
    assert near_duplicate("Tavo lives in Orvik.", "tavo  lives in ORVIK.", 0.95)
    assert not near_duplicate("Tavo lives in Orvik.", "Answer: cat", 0.5)
    assert deduplicate(["Tavo lives in Orvik.", "Answer: cat", "tavo lives in orvik", "Answer: cat!"], 0.9) == [0, 1]


def test_a_pair_is_the_best_against_the_worst_distinct_child_with_a_clear_gap():
    group = [
        child(0, "Tavo lives in Orvik.", 0.3),
        child(1, "tavo lives in orvik", 0.9),  # the better-rewarded of two near-duplicates: it stays
        child(2, "Orvik, I think, or maybe Lorovik.", 0.2),
        child(3, "Orvik, I think, or maybe Lorovik!", 0.1),  # a near-duplicate of a better child: dropped
    ]
    (pair,) = preference_pairs([group], min_gap=0.5, similarity=0.9)
    assert pair["chosen"] == "tavo lives in orvik" and pair["rejected"] == "Orvik, I think, or maybe Lorovik."
    assert pair["rewards"] == {"chosen": 0.9, "rejected": 0.2}
    assert (pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"]) == ([5, 6, 7], [19, 2], [33, 2])
    assert (pair["agent"], pair["task_id"], pair["turn_index"], pair["sample"], pair["round"]) == ("b", "t1", 1, 0, 0)
    json.dumps(pair)
    assert preference_pairs([group], min_gap=0.8, similarity=0.9) == []  # 0.7 apart once duplicates are gone
    assert preference_pairs([group[:2]], min_gap=0.0, similarity=0.9) == []  # one distinct child: no pair


def test_a_group_must_be_one_branch_point():
    other = child(1, "Answer: cat", 0.1)
    other.branched_at = 0
    with pytest.raises(ValueError, match="one branch point"):
        preference_pairs([[child(0, "Tavo lives in Orvik.", 0.9), other]], 0.1, 0.9)
    with pytest.raises(ValueError, match="different prompts"):
        preference_pairs([[child(0, "Tavo lives in Orvik.", 0.9), child(1, "cat", 0.1, prompt=(8,))]], 0.1, 0.9)


def test_real_children_make_pairs_of_their_branched_replies(tiny, parent):
    children = branch(joined_team(), parent, 2, 4, 1.0, 3, task=TASK, score=score)
    score_rollouts(children, RewardConfig(), tiny)
    (pair,) = preference_pairs([children], min_gap=0.0, similarity=1.0)
    best = max(children, key=lambda c: c.total)
    assert pair["prompt_ids"] == parent.turns[2].prompt_ids
    assert tiny.decode(pair["chosen_ids"]) == best.turns[2].reply + "<|im_end|>"
    assert pair["rewards"]["chosen"] == best.total >= pair["rewards"]["rejected"]
