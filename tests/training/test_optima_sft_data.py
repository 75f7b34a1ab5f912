"""iSFT examples: one per agent turn, from that agent's own view, with every token it did not write masked."""

import copy
import json

import pytest

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.agents import Tool, ToolTurn
from kvmesh.training.optima import IGNORE, sample_rollouts, sft_examples

NOTES = ["Tavo lives in Orvik.", "Mira's brother is Tavo."]
TASK = Task("In which city does Mira's brother live?", id="q1", shards=NOTES)


def member(name, *tools):
    # a stop string the random model soon writes, so its turns end on their own (finish "stop"), not at the cap
    return Agent(name, role=f"role of {name}", model="tiny-random", max_new_tokens=12, stop=("e",), tools=tools)


def joined_team(*tools_of_b):
    """a and b speak in parallel, c reads both, then a decision maker (which stops only at its cap)."""
    graph = CommGraph(["a", "b", "c"], [("a", "c"), ("b", "c")])
    return Team([member("a"), member("b", *tools_of_b), member("c")], graph, decision={"max_new_tokens": 4})


def rollouts_of(team, samples=2):
    return sample_rollouts(team, [TASK], samples, 1.0, 0, score=lambda task, result: 1.0)


def unmasked(example):
    return [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE]


def test_each_closed_turn_is_one_example_whose_labels_are_only_the_agents_own_reply(tiny):
    rollouts = rollouts_of(joined_team())
    examples = sft_examples(rollouts, tiny)
    turns = [(r, i, t) for r in rollouts for i, t in enumerate(r.turns) if t.finish_reason != "length"]
    assert [t.agent for _, _, t in turns] == ["a", "b", "c"] * 2  # the decision maker hit its cap: left out
    assert len(examples) == len(turns)
    json.dumps(examples)  # plain JSON values
    for example, (rollout, index, turn) in zip(examples, turns, strict=True):
        n = len(turn.prompt_ids)
        assert example["input_ids"][:n] == turn.prompt_ids
        assert example["labels"][:n] == [IGNORE] * n  # system prompt, notes, task, others' messages, markup
        assert example["labels"][n:] == example["input_ids"][n:] == turn.reply_ids
        assert tiny.decode(unmasked(example)) == turn.reply + "<|im_end|>"  # its reply, and the end of its turn
        assert tiny.decode(example["input_ids"][:n]) == turn.prompt
        meta = {k: example[k] for k in ("agent", "role", "round", "task_id", "sample", "turn_index")}
        assert meta == {
            "agent": turn.agent,
            "role": f"role of {turn.agent}",
            "round": 0,
            "task_id": "q1",
            "sample": rollout.sample,
            "turn_index": index,
        }


def test_other_agents_messages_and_the_agents_own_notes_inside_its_prompt_are_masked(tiny):
    (rollout,) = rollouts_of(joined_team(), samples=1)
    a, b, c = rollout.turns[:3]
    (example,) = [e for e in sft_examples([rollout], tiny) if e["agent"] == "c"]
    ids, spans = tiny.encode_with_spans(c.prompt)
    assert ids == c.prompt_ids
    for text in (f"Message from a (this round):\n{a.reply}", f"Message from b (this round):\n{b.reply}"):
        start = c.prompt.index(text)
        inside = [i for i, (lo, hi) in enumerate(spans) if start <= lo and hi <= start + len(text)]
        assert len(inside) >= tiny.count_tokens(text) - 2  # the message's own tokens (boundaries may merge)
        assert all(example["labels"][i] == IGNORE for i in inside)
    (first,) = [e for e in sft_examples([rollout], tiny) if e["agent"] == "a"]
    start = a.prompt.index(NOTES[0])
    notes = [i for i, (lo, hi) in enumerate(tiny.encode_with_spans(a.prompt)[1]) if start <= lo < start + len(NOTES[0])]
    assert notes and all(first["labels"][i] == IGNORE for i in notes)


def test_turns_cut_at_their_cap_join_only_when_asked_and_without_an_end_of_turn(tiny):
    rollouts = rollouts_of(joined_team(), samples=1)
    examples = sft_examples(rollouts, tiny, keep_overlong=True)
    (decision,) = [e for e in examples if e["agent"] == "decision"]
    assert rollouts[0].turns[-1].finish_reason == "length"
    assert tiny.decode(unmasked(decision)) == rollouts[0].turns[-1].reply  # it never closed its turn


class Answer(Tool):
    name = "answer"

    def before(self, turn: ToolTurn) -> str | None:
        return "Tavo lives in Orvik."


class Stamp(Tool):
    name = "stamp"

    def after(self, turn: ToolTurn, reply: str) -> str:
        return reply + " [checked]"


@pytest.mark.parametrize("tool", [Answer(), Stamp()])
def test_turns_a_tool_answered_or_edited_are_left_out(tiny, tool):
    rollouts = rollouts_of(joined_team(tool), samples=1)
    assert {e["agent"] for e in sft_examples(rollouts, tiny)} == {"a", "c"}


def test_rollouts_of_another_tokenizer_or_too_long_are_refused_or_dropped(tiny):
    (rollout,) = rollouts_of(joined_team(), samples=1)
    lengths = [len(e["input_ids"]) for e in sft_examples([rollout], tiny)]
    assert len(sft_examples([rollout], tiny, max_length=max(lengths))) == 3
    assert len(sft_examples([rollout], tiny, max_length=min(lengths) - 1)) == 0
    no_end = copy.deepcopy(rollout)
    no_end.turns[0].reply_ids = no_end.turns[0].reply_ids[:-1]
    with pytest.raises(ValueError, match="end-of-turn token"):
        sft_examples([no_end], tiny.tokenizer)
    foreign = copy.deepcopy(rollout)
    foreign.turns[1].prompt_ids[0] = len(tiny.tokenizer) + 5
    with pytest.raises(ValueError, match="beyond this tokenizer"):
        sft_examples([foreign], tiny)
