import json
import os
import re
import subprocess
import sys

import pytest

from kvmesh.evals.benchmarks.base import DECISION_MAKER, SOLO, Benchmark, answer_line
from kvmesh.evals.benchmarks.infoqa import (
    MEMBER,
    Difficulty,
    InfoQA,
    exact_match,
    generate,
    load_jsonl,
    normalize_answer,
    token_f1,
)


def _entities(tasks):
    names = set()
    for task in tasks:
        for shard in task.shards:
            names.update(word.strip(".'s") for word in shard.split() if word[:1].isupper())
    return names


def test_generation_is_seeded_and_splits_share_no_entity():
    assert generate(20, "test", seed=3) == generate(20, "test", seed=3)
    assert generate(20, "test", seed=3) != generate(20, "test", seed=4)
    train, val, test = (_entities(generate(200, split, seed=0)) for split in ("train", "validation", "test"))
    assert train and val and test
    assert not (train & test) and not (train & val) and not (val & test)
    other_seed_train = _entities(generate(200, "train", seed=1))
    assert not (other_seed_train & test) and not (other_seed_train & val)  # disjoint across seeds too


PHRASES = {"live": "lives in", "job": "works as a", "pet": "has a"}


def _fact_about(person, question, answer):
    phrase = next(v for k, v in PHRASES.items() if k in question)
    return f"{person} {phrase} {answer}."


@pytest.mark.parametrize("hops", [1, 2])
def test_needed_facts_sit_with_different_agents(hops):
    level = Difficulty(people=5, facts_per_agent=5, hops=hops, agents=3)
    for task in generate(50, "train", seed=1, difficulty=level):
        assert len(task.shards) == 3 and task.hops == hops
        assert all(len(shard.split(". ")) <= 5 for shard in task.shards)
        if hops == 1:
            subject = task.question.rstrip("?").split(" does ")[-1].split(" live")[0].split(" have")[0]
            subject = subject.removeprefix("What is ").removesuffix("'s job")
            holder = [
                i for i, shard in enumerate(task.shards) if _fact_about(subject, task.question, task.answer) in shard
            ]
            assert len(holder) == 1, task
        else:
            owner, kind = task.question.split("'s ")[0].split()[-1], task.question.split("'s ")[1].split()[0]
            link = [i for i, shard in enumerate(task.shards) if f"{owner}'s {kind} is " in shard]
            assert len(link) == 1, task
            sibling = task.shards[link[0]].split(f"{owner}'s {kind} is ")[1].split(".")[0]
            answer_holder = [
                i for i, shard in enumerate(task.shards) if _fact_about(sibling, task.question, task.answer) in shard
            ]
            assert len(answer_holder) == 1 and answer_holder != link, task


def test_difficulty_is_validated():
    with pytest.raises(ValueError, match="hops must be 1 or 2"):
        Difficulty(hops=3)
    with pytest.raises(ValueError, match="agents >= 2"):
        Difficulty(hops=2, agents=1)
    with pytest.raises(ValueError, match="split must be one of"):
        generate(1, "dev")


ROW = {"id": "t1", "question": "Where does Ana live?", "answer": "Rome", "shards": ["Ana lives in Rome.", ""]}


def _write(tmp_path, *lines: str | bytes):
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def test_jsonl_round_trip_and_malformed_files(tmp_path):
    tasks = generate(5, "validation", seed=2)
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(t.to_json() for t in tasks) + "\n")
    assert load_jsonl(good) == tasks
    cases = {
        "{not json": "not valid JSON",
        "[1, 2]": r"must be a JSON object, got \[1, 2\]",
        json.dumps({"id": 1, "question": "q", "answer": "a"}): r"missing field\(s\) \['shards'\]",
        json.dumps({"id": 1, "question": "q", "answer": "a", "shards": "one"}): "non-empty list of strings",
        json.dumps({"id": 1, "question": "", "answer": "a", "shards": ["x"]}): "question must be a non-empty string",
        "\n".join([json.dumps({"id": 1, "question": "q", "answer": "a", "shards": ["x"]})] * 2): "duplicate id '1'",
        "": "no tasks",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_jsonl(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hops": "two"}, "hops must be an integer >= 1, got 'two'"),
        ({"hops": 0}, "hops must be an integer >= 1, got 0"),
        ({"hops": 1.5}, "hops must be an integer >= 1, got 1.5"),
        ({"hops": True}, "hops must be an integer >= 1, got true"),
        ({"id": None}, "id must be a non-empty string or an integer, got null"),
        ({"id": ""}, "id must be a non-empty string or an integer, got ''"),
        ({"id": "  "}, "id must be a non-empty string or an integer, got '  '"),
        ({"id": ["t1"]}, r"id must be a non-empty string or an integer, got \['t1'\]"),
        ({"id": False}, "id must be a non-empty string or an integer, got false"),
        ({"question": 7}, "question must be a non-empty string, got 7"),
        ({"answer": None}, "answer must be a non-empty string, got null"),
        ({"shards": []}, r"shards must be a non-empty list of strings, one per agent, got \[\]"),
        ({"shards": ["a", 3]}, r"shards must be a non-empty list of strings, one per agent, got \['a', 3\]"),
    ],
)
def test_a_bad_field_names_the_line_the_field_and_what_was_expected(tmp_path, change, message):
    path = _write(tmp_path, json.dumps(ROW), "", json.dumps(ROW | {"id": "t2"} | change))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: {message}$"):
        load_jsonl(path)


def test_ids_are_strings_or_integers_and_unique_across_both(tmp_path):
    tasks = load_jsonl(_write(tmp_path, json.dumps(ROW | {"id": 7, "hops": 2})))
    assert (tasks[0].id, tasks[0].hops, tasks[0].shards) == ("7", 2, ["Ana lives in Rome.", ""])
    path = _write(tmp_path, json.dumps(ROW | {"id": 7}), json.dumps(ROW | {"id": "7"}))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: duplicate id '7'$"):
        load_jsonl(path)


def test_non_utf8_bytes_name_the_file_and_line(tmp_path):
    latin1 = json.dumps(ROW | {"answer": "Zürich"}, ensure_ascii=False).encode("latin-1")
    path = _write(tmp_path, json.dumps(ROW | {"id": "t0"}), latin1)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: not valid UTF-8 \(byte 0xfc at byte \d+ "):
        load_jsonl(path)


def test_a_bad_file_fails_the_cli_with_one_line_and_no_traceback(tmp_path):
    path = _write(tmp_path, json.dumps(ROW | {"hops": "two"}))
    flags = ["--data-path", str(path), "--oracle", "--limit", "1", "--out", str(tmp_path / "r")]
    run = subprocess.run(
        [sys.executable, "-m", "kvmesh.cli", "eval", "infoqa", *flags],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr == f"kvmesh: error: {path}:1: hops must be an integer >= 1, got 'two'\n"
    assert "Traceback" not in run.stdout


def test_metrics():
    assert normalize_answer("The  Baker!") == "baker"
    assert exact_match("the baker.", "Baker") and not exact_match("a baker in town", "baker")
    assert not exact_match(None, "baker")
    assert token_f1("a baker in town", "baker") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("Orvik", "Orvik") == 1.0 and token_f1("", "Orvik") == 0.0


def test_answer_in_reply_counts_whole_words_only():
    from kvmesh.evals.benchmarks import InfoQA

    bench = InfoQA()
    sample = bench.samples("test")[0]
    hit = bench.score(sample, f"I think it is {sample.gold}.")
    assert hit.metrics["answer_in_reply"] == 1.0
    miss = bench.score(sample, f"x{sample.gold.lower()}y is what I read")
    assert miss.metrics["answer_in_reply"] == 0.0


def test_terse_examples_are_the_same_turns_with_the_shortest_replies_that_do_the_job():
    for role in (MEMBER, SOLO, DECISION_MAKER):
        terse, full = InfoQA.terse_examples(role), InfoQA.examples(role)
        assert [user for user, _ in terse[: len(full)]] == [user for user, _ in full]
        assert all(len(short) <= len(long) for (_, short), (_, long) in zip(terse, full, strict=False))
    assert [reply for _, reply in InfoQA.terse_examples(MEMBER)] == ["Bo's sister is Lin.", "Answer: cook", "Nothing."]
    assert InfoQA.terse_examples(DECISION_MAKER)[0][1] == "Answer: judge"
    # the protocol's default keeps a reply's answer line, and a reply without one as it is
    default = Benchmark.terse_examples.__func__(InfoQA, MEMBER)
    assert [reply for _, reply in default] == ["Bo's sister is Lin.", "Answer: cook"]
    assert answer_line("Tom works as a cook.\nAnswer: cook") == "Answer: cook" and answer_line("Tom cooks.") is None
