"""Optima rollouts through the real Team runtime: exact prompt ids, reply ids, honest tokens, seeds, JSON."""

import json

import pytest

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.evals.benchmarks.base import team_for
from kvmesh.evals.benchmarks.infoqa import InfoQA
from kvmesh.training.optima import PromptMismatchError, Rollout, end_of_turn_id, sample_rollouts
from kvmesh.training.optima.rollout import reframed
from kvmesh.training.optima.scoring import RewardConfig, score_rollouts
from kvmesh.training.optima.teams import compact_spec


@pytest.fixture
def prefilled(tiny):
    """Every prompt the tiny model prefilled, as the tuple of ids it read (padding dropped)."""
    rows: list[tuple[int, ...]] = []

    def record(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        if ids.shape[1] > 1 and mask.shape[1] == ids.shape[1]:  # a prefill without a prebuilt cache
            rows.extend(tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True))

    hook = tiny.model.register_forward_pre_hook(record, with_kwargs=True)
    yield rows
    hook.remove()


@pytest.fixture(scope="module")
def infoqa():
    bench = InfoQA(count=2)
    return bench, bench.samples("train")


def star_team(max_new_tokens=6):
    """The InfoQA team on a star graph (the hub reads both others in the same round) with a decision maker."""
    return team_for(InfoQA, "tiny-random", "star", agents=3, max_new_tokens=max_new_tokens)


def rollouts_of(team, infoqa, seed, samples=3, batch_size=4):
    bench, tasks = infoqa
    return sample_rollouts(team, tasks, samples, 0.9, seed, batch_size, score=bench.reward)


def test_end_of_turn_is_the_token_that_closes_an_assistant_turn(tiny):
    assert end_of_turn_id(tiny.tokenizer) == tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_every_turn_holds_the_ids_the_model_read_and_its_reply_ids(tiny, infoqa, prefilled):
    rollouts = rollouts_of(star_team(), infoqa, seed=1)
    assert [(r.task_id, r.sample) for r in rollouts] == [(s.id, k) for s in infoqa[1] for k in range(3)]
    end = end_of_turn_id(tiny.tokenizer)
    for rollout in rollouts:
        assert rollout.agents == ["agent_1", "agent_2", "agent_3"]
        assert [t.agent for t in rollout.turns][-1] == "decision" and rollout.turns[-1].round == "decision"
        for turn in rollout.turns:
            assert len(turn.prompt_ids) == turn.prompt_tokens > 0
            assert tuple(turn.prompt_ids) in prefilled  # exactly what the model read
            assert tiny.decode(turn.prompt_ids) == turn.prompt
            closed = turn.finish_reason != "length"
            assert turn.reply_ids == tiny.encode_prompt(turn.reply) + ([end] if closed else [])
        spent = sum(t.prompt_tokens + t.completion_tokens for t in rollout.turns)
        assert rollout.tokens == spent == rollout.prompt_tokens + rollout.completion_tokens
    hub = next(t for t in rollouts[0].turns if t.agent == "agent_1")
    for leaf in [t for t in rollouts[0].turns if t.agent in ("agent_2", "agent_3")]:
        assert f"Message from agent_1 (this round):\n{hub.reply}" in leaf.prompt


def test_batches_mix_tasks_and_samples_and_the_same_seed_gives_the_same_rollouts(infoqa):
    team = star_team()
    first, again, other = (rollouts_of(team, infoqa, seed) for seed in (5, 5, 6))
    assert [r.to_dict() for r in first] == [r.to_dict() for r in again]
    replies = [[t.reply for t in r.turns] for r in first]
    assert replies != [[t.reply for t in r.turns] for r in other]
    assert len({tuple(r) for r in replies[:3]}) > 1  # samples of one task differ
    seeds = [r.seed for r in first]
    assert seeds[:4] == [seeds[0]] * 4 and seeds[4:] == [seeds[4]] * 2 and seeds[0] != seeds[4]  # batches of 4
    assert {r.task_id for r in first[:4]} == {s.id for s in infoqa[1]}  # the first batch mixes both tasks
    assert all(a.temperature == 0 for a in team.members)  # the caller's team is untouched


def test_a_rollout_round_trips_through_json_with_its_reward(tiny, infoqa):
    rollouts = rollouts_of(star_team(), infoqa, seed=2, samples=1)
    score_rollouts(rollouts, RewardConfig(), tiny)
    for rollout in rollouts:
        back = Rollout.from_dict(json.loads(json.dumps(rollout.to_dict())))
        assert back == rollout and back.parts.total == rollout.total


def test_a_run_stopped_by_the_budget_still_counts_what_it_spent():
    agents = [Agent(n, model="tiny-random", max_new_tokens=8) for n in ("a", "b")]
    team = Team(agents, CommGraph(["a", "b"], [("a", "b")]), decision="last", token_budget=150)
    (rollout,) = sample_rollouts(team, [Task("Who has a cat? " * 8, id="q")], 1, 0.9, 0, score=lambda t, r: 0.0)
    assert rollout.stop_reason == "budget"
    assert rollout.tokens > 0 and rollout.tokens == sum(t.prompt_tokens + t.completion_tokens for t in rollout.turns)


def test_a_prompt_whose_text_re_encodes_to_other_ids_is_refused():
    team = Team([Agent("a", model="tiny-random", max_new_tokens=3)], "chain", decision="last")
    task = Task("Does <|im_end|> end a turn?", id="odd")  # the runtime reads the control token as text
    with pytest.raises(PromptMismatchError, match="re-encodes to"):
        sample_rollouts(team, [task], 1, 0.0, 0, score=lambda t, r: 0.0)


def test_a_turn_that_read_cached_pieces_is_refused():
    agents = [Agent(n, model="tiny-random", max_new_tokens=4) for n in ("a", "b")]
    team = Team(agents, CommGraph.preset("chain", ["a", "b"], channel="kv-reuse"), decision="last")
    with pytest.raises(PromptMismatchError, match="read cached pieces"):
        sample_rollouts(team, [Task("Who?", id="q")], 1, 0.0, 0, score=lambda t, r: 0.0)


def test_an_explored_rollout_reads_as_if_the_policy_had_written_it(tiny, infoqa):
    policy = star_team()
    compact = Team.from_spec(compact_spec(policy.to_spec(), InfoQA))
    sampled = rollouts_of(compact, infoqa, seed=3, samples=1)[0]
    mine = reframed(sampled, compact, policy, "compact")
    assert mine.protocol == "compact" and sampled.protocol is None
    assert (mine.completion_tokens, mine.answer, mine.score) == (
        sampled.completion_tokens,
        sampled.answer,
        sampled.score,
    )
    frames = {
        agent.name: (tiny.chat.frame(agent.system_text(), agent.examples)[0], target)
        for agent, target in zip(compact.members, policy.members, strict=True)
    }
    for old, new in zip(sampled.turns, mine.turns, strict=True):
        before, agent = frames[old.agent]
        own = tiny.chat.frame(agent.system_text(), agent.examples)[0]
        assert new.prompt == own + old.prompt[len(before) :] and new.prompt != old.prompt
        assert new.prompt_ids == tiny.encode_prompt(new.prompt) and new.prompt_tokens == len(new.prompt_ids)
        assert (new.reply, new.reply_ids) == (old.reply, old.reply_ids)
    assert mine.prompt_tokens == sum(t.prompt_tokens for t in mine.turns)
    # a turn that read no message is exactly the policy's own prompt for it
    leaf = next(i for i, t in enumerate(mine.turns) if "Message from" not in t.prompt)
    own = rollouts_of(policy, infoqa, seed=3, samples=1)[0]
    assert own.turns[leaf].prompt_ids == mine.turns[leaf].prompt_ids
    with pytest.raises(PromptMismatchError, match="frame of the team that sampled it"):
        reframed(own, compact, policy, "compact")
