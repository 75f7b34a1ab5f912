import json

import pytest

from kvmesh import Agent, Task, Team
from kvmesh.agents.decision import majority_reply, majority_vote
from kvmesh.agents.task import generic_answer
from kvmesh.evals.benchmarks import GSM8K, InfoQA, benchmark_team
from kvmesh.evals.benchmarks.infoqa import short_answer
from kvmesh.evals.numbers import extract_flexible


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("Let me multiply.\n17 * 3 = 51.", "51"),
        ("17 * 3 = 51", "51"),
        ("So the total is 1,200!", "1,200"),
        ("The temperature drops to -3.", "-3"),
        ("The average is 2.5.", "2.5"),
        ("It takes 2.5 hours.", "It takes 2.5 hours"),  # no final number: the line
        ("Reasoning...\nAnswer: Paris.\nI hope that helps", "Paris"),
        ("**Final answer:** 17 * 3 = 51", "51"),
        ("The answer is **Lisbon**.", "Lisbon"),
        ("The answer is: 51", "51"),  # a label with both "is" and a colon
        ("Answer:\n  Oslo  ", "Oslo"),
        ("Answer: 7\nbecause 3 + 4 = 7.", "7"),  # a label wins over a later line
        ("To answer this, look at the map.\nThe capital is Rome.", "The capital is Rome"),
        ("  Paris.  \n\n", "Paris"),
        ("", None),
        ("\n  \n", None),
    ],
)
def test_the_default_extractor_finds_the_answer_of_a_generic_reply(reply, answer):
    assert generic_answer(reply) == answer
    assert Task("Q?").extract_answer is generic_answer


def test_majority_votes_on_extracted_answers_not_whole_lines():
    replies = [("a", "Let me think.\n17 * 3 = 50."), ("b", "17 * 3 = 51."), ("c", "I get 51.")]
    assert majority_reply(replies, generic_answer) == "17 * 3 = 51."  # 51 has two votes, though no two lines match
    assert majority_vote(replies, generic_answer) == "51"
    tie = [("a", "x\nAnswer: 9"), ("b", "Answer: 7"), ("c", "nothing to say\n"), ("d", "It is 7"), ("e", "9.")]
    assert majority_vote(tie, generic_answer) == "9"  # 2 to 2: the earliest voter's answer
    assert majority_vote([("a", "Paris"), ("b", "paris"), ("c", "paris")], generic_answer) == "paris"  # exact strings
    assert majority_reply([("a", "x"), ("b", "y")], lambda text: None) is None


def _agents(names: str) -> list[Agent]:
    return [Agent(n, role=f"{n} role", model="tiny-random", max_new_tokens=6) for n in names]


def test_a_majority_team_votes_with_the_tasks_extractor(tiny):
    read: list[str] = []

    def two_to_one(reply: str) -> str:  # agent a votes alone, b and c agree: b's reply must win
        read.append(reply)
        return "lonely" if len(read) == 1 else "popular"

    team = Team(_agents("abc"), "complete", rounds=2, decision="majority")
    result = team.run(Task("What is 17 * 3?", extract_answer=two_to_one))
    last_round = {m.name: m.content for m in result.messages if m.response_metadata["round"] == 1}
    assert read == [last_round[name] for name in "abc"]  # each agent's latest reply, in agent order
    assert last_round["b"] != last_round["c"]  # so the answer below is b's by the vote, not by being last
    assert result.answer == last_round["b"]
    assert {m.name for m in result.messages} == set("abc")  # no decision-maker call

    first_everyone = Team(_agents("abc"), "complete", decision="majority").run(Task("Q?", extract_answer=str.upper))
    assert first_everyone.answer == first_everyone.messages[0].content  # all different votes: the earliest wins
    no_vote = Team(_agents("abc"), "complete", decision="majority").run(Task("Q?", extract_answer=lambda t: None))
    assert no_vote.answer == no_vote.messages[-1].content  # nobody voted: the last reply, as `last`


def _gsm8k(tmp_path) -> GSM8K:
    row = {"question": "What is 17 * 3?", "answer": "17 * 3 = 51\n#### 51"}
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    return GSM8K(str(tmp_path))


@pytest.mark.parametrize(("name", "extractor"), [("infoqa", short_answer), ("gsm8k", extract_flexible)])
def test_majority_on_a_benchmark_task_uses_the_benchmarks_extractor(tiny, tmp_path, name, extractor):
    benchmark = _gsm8k(tmp_path) if name == "gsm8k" else InfoQA(count=1)
    sample = benchmark.samples("test")[0]
    assert sample.task.extract_answer is extractor
    team = benchmark_team(name, "tiny-random", agents=2, decision="majority", max_new_tokens=6)
    result = team.run(sample.task)
    replies = [(m.name, m.content) for m in result.messages]
    assert result.answer == (majority_reply(replies, extractor) or replies[-1][1])
    # replies where the benchmark's answer and the generic one differ
    votes = {
        "infoqa": [("a", "Orvik\nI read it in my notes."), ("b", "Lund"), ("c", "Orvik\nI am sure.")],
        "gsm8k": [("a", "51 apples\nDone."), ("b", "Done."), ("c", "I count 51 apples\nDone.")],
    }[name]
    assert majority_vote(votes, extractor) == {"infoqa": "Orvik", "gsm8k": "51"}[name]
    assert majority_vote(votes, generic_answer) != majority_vote(votes, extractor)
