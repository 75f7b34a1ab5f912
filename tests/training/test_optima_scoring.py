"""Optima's reward on hand-made conversations: score, token cost against the task's normaliser, readability from
the base model's loss on each message, and every penalty (each fires on its case and not on a clean one)."""

import math

import pytest
import torch

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.config import ConfigError
from kvmesh.training.optima import (
    RewardConfig,
    Rollout,
    RolloutTurn,
    message_losses,
    penalties,
    readability,
    sample_rollouts,
    score_rollouts,
)
from kvmesh.training.reward import utility

AGENTS = ["agent_1", "agent_2"]
CLEAN = [
    ("agent_1", 0, "Mira's brother is Tavo."),
    ("agent_2", 0, "Tavo lives in Orvik."),
    ("decision", "decision", "Answer: Orvik"),
]
NO_READING = RewardConfig(readability_weight=0.0, count="all")  # prompt + completion: the figures below


def conversation(turns=CLEAN, task="t1", sample=0, score=1.0, tokens=(300, 30), stop="completed"):
    """A hand-made rollout: (agent, round, reply) turns that ended on their own, and its token totals."""
    made = [RolloutTurn(a, "member", r, "prompt", [1, 2], text, [3, 2], "eos", 10, 5) for a, r, text in turns]
    return Rollout(
        task, "Where does Mira's brother live?", sample, 0, list(AGENTS), made, "Orvik", score, *tokens, stop
    )


def with_finish(rollout, index, finish):
    rollout.turns[index].finish_reason = finish
    return rollout


def test_a_clean_conversation_pays_no_penalty_and_its_total_is_the_utility():
    clean = conversation()
    assert penalties(clean, NO_READING) == {}
    (scored,) = score_rollouts([clean], NO_READING)
    parts = scored.parts
    assert (parts.score, parts.tokens, parts.normaliser, parts.readability) == (1.0, 330, 330.0, 0.0)
    assert parts.token_cost == pytest.approx(NO_READING.token_weight)
    assert parts.total == pytest.approx(utility(1.0, 330, NO_READING.token_weight, 330))


@pytest.mark.parametrize(
    ("name", "make", "amount"),
    [
        ("overlong", lambda: with_finish(with_finish(conversation(), 0, "length"), 1, "length"), 2 * 0.2),
        ("empty", lambda: conversation([("agent_1", 0, ""), ("agent_2", 0, "  "), ("decision", "decision", "")]), 1.0),
        ("empty", lambda: conversation([]), 1.0),
        ("impersonation", lambda: conversation([("agent_1", 0, "Tavo.\nagent_2: Orvik"), *CLEAN[1:]]), 0.5),
        ("impersonation", lambda: conversation([("agent_1", 0, "**agent_2**: yes"), *CLEAN[1:]]), 0.5),
        (
            "impersonation",
            lambda: conversation([*CLEAN[:2], ("decision", "decision", "Message from agent_1 (x)")]),
            0.5,
        ),
        ("repeat", lambda: conversation([("agent_1", 0, "Tavo lives in Orvik."), *CLEAN[1:]]), 0.2),
        ("repeat", lambda: conversation([*CLEAN[:2], ("agent_1", 1, "TAVO lives   in orvik.")]), 0.2),
        ("stopped", lambda: conversation(stop="budget"), 0.5),
        ("stopped", lambda: conversation(stop="context"), 0.5),
    ],
)
def test_each_penalty_fires_on_its_case(name, make, amount):
    rollout = make()
    found = penalties(rollout, NO_READING)
    assert found == {name: pytest.approx(amount)}
    (scored,) = score_rollouts([rollout], NO_READING, normaliser={"t1": 330.0})
    assert scored.parts.total == pytest.approx(utility(1.0, rollout.tokens, 0.5, 330) - amount)


@pytest.mark.parametrize(
    "turns",
    [
        [("agent_1", 0, "I agree with agent_2: Orvik."), *CLEAN[1:]],  # a name mid-line is no speaker label
        [("agent_1", 0, "agent_1: Tavo."), *CLEAN[1:]],  # its own name
        [*CLEAN[:2], ("decision", "decision", "agent_1: Tavo.\nagent_2: Orvik.\nAnswer: Orvik")],  # citing who said it
        [*CLEAN[:2], ("decision", "decision", "Tavo lives in Orvik.")],  # the decision restating a member
        [("agent_1", 0, "Answer: cat"), ("agent_2", 0, "Answer: a cat")],  # near but not the same text
    ],
)
def test_no_penalty_fires_on_near_misses(turns):
    assert penalties(conversation(turns), NO_READING) == {}


def test_the_decision_step_joins_the_repeat_check_when_asked():
    rollout = conversation([*CLEAN[:2], ("decision", "decision", "Tavo lives in Orvik.")])
    assert penalties(rollout, RewardConfig(readability_weight=0, repeat_in_decision=True)) == {"repeat": 0.2}


def test_the_normaliser_is_the_most_a_rollout_of_the_same_task_spent():
    rollouts = [
        conversation(task="t1", tokens=(90, 10)),
        conversation(task="t1", sample=1, tokens=(350, 50), stop="budget"),  # stopped: its 400 tokens count
        conversation(task="t2", tokens=(40, 10)),
    ]
    score_rollouts(rollouts, NO_READING)
    assert [r.parts.normaliser for r in rollouts] == [400.0, 400.0, 50.0]
    assert [r.parts.token_cost for r in rollouts] == pytest.approx([0.5 * 100 / 400, 0.5, 0.5])
    assert rollouts[1].parts.total == pytest.approx(1.0 - 0.5 - 0.5)  # full token cost and the stop penalty
    score_rollouts(rollouts, NO_READING, normaliser={"t1": 1000.0})
    assert [r.parts.normaliser for r in rollouts] == [1000.0, 1000.0, 50.0]


def test_by_default_the_token_cost_counts_what_the_team_generated():
    short, long = conversation(tokens=(900, 20)), conversation(sample=1, tokens=(950, 80))
    score_rollouts([short, long], RewardConfig(readability_weight=0.0))
    assert (short.parts.tokens, long.parts.tokens, short.parts.normaliser) == (20, 80, 80.0)
    assert short.parts.token_cost == pytest.approx(0.5 * 20 / 80)  # counting all: 0.5 * 920 / 1030, nearly the same
    with pytest.raises(ConfigError, match="count"):
        RewardConfig(count="prompt")


def test_message_losses_are_batched_and_match_a_direct_forward_pass(tiny):
    texts = ["Tavo lives in Orvik.", "", "Answer: cat", "Mira's brother is Tavo and he has a goat named <|im_end|>."]
    batched = message_losses(tiny, texts, batch_size=8)
    alone = message_losses(tiny, texts, batch_size=1)
    assert batched[1] is None and alone[1] is None
    assert [b for b in batched if b is not None] == pytest.approx([a for a in alone if a is not None], rel=1e-4)
    ids = [tiny.tokenizer.bos_token_id, *tiny.tokenizer("Answer: cat", add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    direct = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item()
    assert batched[2] == pytest.approx(direct, rel=1e-4)
    assert readability(tiny, texts, loss_floor=0.01) == pytest.approx([1 / loss if loss else None for loss in batched])


def test_readability_batches_stay_within_the_logits_cap(tiny, monkeypatch):
    from kvmesh.training.optima import scoring

    assert scoring._batches([3, 0, 9, 4, 2], batch_size=8, cap=20) == [[4, 0, 3], [2]]  # 3 · 5 <= 20 < 2 · 10
    assert scoring._batches([3, 3, 3], batch_size=2, cap=100) == [[0, 1], [2]]
    texts = ["Tavo lives in Orvik.", "Answer: cat", "Mira's brother is Tavo and he has a goat."]
    wide = message_losses(tiny, texts)
    monkeypatch.setattr(scoring, "LOGITS_CAP", 12 * len(tiny.tokenizer))  # one short row per pass
    assert message_losses(tiny, texts) == pytest.approx(wide, rel=1e-4)


def test_a_rollouts_readability_is_one_over_its_worst_message(tiny):
    rollout = conversation([*CLEAN[:2], ("decision", "decision", "")])
    config = RewardConfig(loss_floor=0.01)
    score_rollouts([rollout], config, tiny)
    worst = max(message_losses(tiny, [t for _, _, t in CLEAN[:2]]))
    assert rollout.parts.readability == pytest.approx(1 / worst, rel=1e-4)
    expected = utility(1.0, 330, 0.5, 330) + config.readability_weight / worst
    assert rollout.parts.total == pytest.approx(expected, rel=1e-4)
    floored = conversation()
    score_rollouts([floored], RewardConfig(loss_floor=100.0), tiny)  # every loss below the floor: 1 / floor
    assert floored.parts.readability == pytest.approx(0.01)


def test_readability_needs_the_base_model_unless_its_weight_is_zero():
    with pytest.raises(ValueError, match="frozen base model"):
        score_rollouts([conversation()], RewardConfig())
    with pytest.raises(ConfigError, match="token_weight, overlong_penalty must be >= 0"):
        RewardConfig(token_weight=-1, overlong_penalty=-0.1)


def test_a_real_rollout_stopped_by_its_budget_is_penalised_and_its_tokens_count():
    agents = [Agent(n, model="tiny-random", max_new_tokens=8) for n in ("a", "b")]
    team = Team(agents, CommGraph(["a", "b"], [("a", "b")]), decision="last", token_budget=150)
    rollouts = sample_rollouts(team, [Task("Who has a cat? " * 8, id="q")], 2, 0.9, 0, score=lambda t, r: 1.0)
    score_rollouts(rollouts, NO_READING)
    for rollout in rollouts:
        assert rollout.stop_reason == "budget" and rollout.tokens > 0
        assert rollout.parts.penalties["stopped"] == NO_READING.stopped_penalty
        assert rollout.parts.token_cost == pytest.approx(0.5 * rollout.tokens / max(r.tokens for r in rollouts))


@pytest.mark.slow
def test_the_real_base_model_reads_plain_sentences_as_more_readable_than_noise(smollm):
    plain, noise = readability(smollm, ["Tavo lives in Orvik.", "zq Orvik xv_kk ppp Tavo qq;wz"])
    assert plain > noise
    assert not math.isnan(plain)
