"""Splits that cannot leak: every benchmark's train, validation and test are disjoint, for generators, datasets
and a user's file; a file's split depends on each id alone; scoring a file reads all of it unless asked."""

import json
import os
import re
from collections import Counter

import pytest

from kvmesh.evals.benchmarks import InfoQA, make_benchmark
from kvmesh.evals.benchmarks.infoqa import generate
from kvmesh.evals.benchmarks.infoqa_projects import LABS, generate_projects
from kvmesh.evals.benchmarks.splits import ALL, SPLITS, assign_splits, split_of
from kvmesh.evals.runner import EvalConfig


def write_file(path, tasks, split=None):
    rows = [json.loads(t.to_json()) | ({"split": split(i)} if split else {}) for i, t in enumerate(tasks)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ids(samples):
    return {s.id for s in samples}


def test_a_tasks_split_depends_on_its_id_and_seed_alone():
    keys = [f"task-{i}" for i in range(3000)]
    counts = Counter(split_of(k) for k in keys)
    assert abs(counts["train"] / 3000 - 0.6) < 0.03 and abs(counts["test"] / 3000 - 0.2) < 0.03
    assert [split_of(k) for k in keys[:50]] == [split_of(k) for k in reversed(keys[:50])][::-1]
    assert [split_of(k, seed=1) for k in keys[:200]] != [split_of(k) for k in keys[:200]]
    with pytest.raises(ValueError, match="summing to 1"):
        split_of("x", fractions=(0.5, 0.5, 0.5))


def test_a_file_is_split_by_hash_disjointly_and_growing_it_moves_no_task(tmp_path):
    tasks = generate(60, "test", seed=3)
    small = InfoQA(str(write_file(tmp_path / "a.jsonl", tasks[:40])))
    parts = {split: ids(small.samples(split)) for split in SPLITS}
    assert all(parts[a].isdisjoint(parts[b]) for a in SPLITS for b in SPLITS if a != b)
    assert set().union(*parts.values()) == ids(small.samples(ALL)) and len(ids(small.samples(ALL))) == 40
    assert all(parts[split] for split in SPLITS)
    grown = InfoQA(str(write_file(tmp_path / "b.jsonl", list(reversed(tasks)))))
    for split in SPLITS:  # the 40 old tasks keep their splits in a longer, reordered file
        assert parts[split] <= ids(grown.samples(split))
    assert small.split_rule("train").by == "hash" and small.split_rule(ALL).by == "all"


def test_a_files_own_split_fields_are_used_and_a_mixed_file_is_refused(tmp_path):
    tasks = generate(9, "test")
    declared = InfoQA(str(write_file(tmp_path / "f.jsonl", tasks, lambda i: SPLITS[i % 3])))
    assert ids(declared.samples("validation")) == {tasks[i].id for i in (1, 4, 7)}
    assert declared.split_rule("test").by == "field"
    rows = [json.loads(t.to_json()) for t in tasks]
    rows[0]["split"] = "train"
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="1 of 9 tasks have a 'split' field"):
        InfoQA(str(tmp_path / "mixed.jsonl")).samples("train")
    rows[0]["split"] = "dev"
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"bad.jsonl:1.*split"):
        InfoQA(str(tmp_path / "bad.jsonl")).samples("train")


def test_assign_splits_refuses_an_unknown_split():
    with pytest.raises(ValueError, match="'dev'"):
        assign_splits(["a", "b"], ["train", "dev"])


def people_and_places(tasks) -> set[str]:
    """InfoQA's invented names (people and places) in questions, answers and notes."""
    text = " ".join(f"{t.question} {t.answer} {' '.join(t.shards)}" for t in tasks)
    common = {"In", "What", "Which", "Where", "Who"}
    return {word for word in re.findall(r"\b[A-Z][a-z]+\b", text) if word not in common}


def projects_and_leads(tasks) -> set[str]:
    """infoqa-projects' entities: project names and the leads' surnames, wherever they appear."""
    text = " ".join(f"{t.question} {' '.join(t.shards)}" for t in tasks)
    return set(re.findall(r"(?:[Pp]roject|Dr\.) ([A-Z][a-z]+)", text)) | set(
        re.findall(r"The ([A-Z][a-z]+) team", text)
    )


@pytest.mark.parametrize(
    ("make", "entities"),
    [
        (lambda split: generate(200, split), people_and_places),
        (lambda split: generate_projects(200, split), projects_and_leads),
    ],
    ids=["infoqa", "infoqa-projects"],
)
def test_a_generators_splits_share_no_entity_in_any_pair(make, entities):
    found = {split: entities(make(split)) for split in SPLITS}
    assert all(len(found[split]) >= 8 for split in SPLITS)  # something was extracted
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not found[a] & found[b], (a, b, sorted(found[a] & found[b])[:5])


def test_generators_have_no_all_split_and_differ_by_seed():
    for name in ("infoqa", "infoqa-projects"):
        bench = make_benchmark(name)
        with pytest.raises(ValueError, match="'all'"):
            bench.samples(ALL)
        other = make_benchmark(name, seed=1)
        assert [s.task.question for s in other.samples("test")] != [s.task.question for s in bench.samples("test")]


def test_the_projects_domain_gives_its_needed_facts_to_either_agent():
    holders = Counter()
    for task in generate_projects(200, "test"):
        lead = re.search(r"project (\w+)\?", task.question)
        if task.hops == 2 and lead:
            holders[
                next(i for i, shard in enumerate(task.shards) if f"Project {lead.group(1)} is led by" in shard)
            ] += 1
    assert min(holders[0], holders[1]) > 30  # a designer cannot learn "ask the first agent"
    assert {t.answer for t in generate_projects(200, "test") if t.hops == 2} & set(LABS)


def test_gsm8k_validation_is_carved_from_the_train_file_and_test_is_the_test_file():
    path = os.environ.get("KVMESH_GSM8K_PATH")
    if not path or not os.path.isfile(os.path.join(path, "train.jsonl")):  # as every GSM8K test: CI sets it
        pytest.skip("GSM8K data not found: set KVMESH_GSM8K_PATH to a folder with train.jsonl and test.jsonl")
    bench = make_benchmark("gsm8k")
    train, val, test = (bench.samples(split) for split in SPLITS)
    assert ids(train).isdisjoint(ids(val)) and len(train) + len(val) == 7473
    assert 0.07 < len(val) / 7473 < 0.13
    assert all(s.id.startswith("test/") for s in test) and len(test) == 1319


def test_humaneval_scores_all_problems_by_default_and_splits_them_for_learning():
    bench = make_benchmark("humaneval", allow_code_execution=True)
    parts = {split: ids(bench.samples(split)) for split in SPLITS}
    assert sum(len(p) for p in parts.values()) == 164 == len(set().union(*parts.values()))
    assert EvalConfig("humaneval", allow_code_execution=True).split == ALL


def test_the_default_scoring_split_is_test_for_a_generator_and_all_for_a_file(tmp_path):
    path = write_file(tmp_path / "t.jsonl", generate(5, "test"))
    assert EvalConfig("infoqa").split == "test"
    assert EvalConfig("infoqa", data_path=str(path)).split == ALL
    assert EvalConfig("infoqa", data_path=str(path), split="validation").split == "validation"


def test_design_splits_of_a_file_are_its_train_and_validation_splits(tmp_path):
    tasks = generate(80, "train")
    bench = InfoQA(str(write_file(tmp_path / "t.jsonl", tasks)))
    train, val = bench.design_splits(20, 5)
    assert ids(train) <= ids(bench.samples("train")) and ids(val) <= ids(bench.samples("validation"))
    assert ids(train).isdisjoint(ids(bench.samples("test"))) and ids(val).isdisjoint(ids(bench.samples("test")))
    with pytest.raises(ValueError, match="ask for fewer"):
        bench.design_splits(80, 5)
