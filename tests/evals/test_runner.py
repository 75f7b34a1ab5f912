import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks import make_benchmark
from kvmesh.evals.benchmarks.infoqa import InfoQA, generate
from kvmesh.evals.report import compare_table
from kvmesh.evals.runner import EvalConfig, run_eval
from kvmesh.evals.store import RunDirectoryError, read_samples
from kvmesh.llm.base import ContextLengthError

GSM8K = os.environ.get("KVMESH_GSM8K_PATH")
needs_gsm8k = pytest.mark.skipif(not GSM8K, reason="GSM8K data not found: set KVMESH_GSM8K_PATH")


@pytest.mark.parametrize(
    ("name", "options", "count"),
    [
        pytest.param("gsm8k", {"data_path": GSM8K}, 1319, marks=needs_gsm8k),
        ("humaneval", {"allow_code_execution": True}, 164),
        ("infoqa", {}, 200),
    ],
)
def test_oracle_scores_100_percent_through_the_scoring_path(tmp_path, name, options, count):
    summary = run_eval(EvalConfig(name, oracle=True, **options), tmp_path / "run", progress=False)
    assert summary["samples"] == count
    assert summary["metrics"]["accuracy"]["value"] == 1.0
    rows = read_samples(tmp_path / "run")
    assert len({r["id"] for r in rows}) == count and all(r["correct"] for r in rows)
    if name == "gsm8k":
        assert summary["metrics"]["strict"]["value"] == 1.0 and rows[0]["extracted"]["strict"] == rows[0]["gold"]
    if name == "humaneval":
        assert summary["metrics"]["pass@1"]["value"] == 1.0


def test_completions_from_any_source(tmp_path):
    completions = tmp_path / "answers.jsonl"
    lines = [
        {"id": "HumanEval/0", "completion": "    return False\n"},
        {"id": "HumanEval/2", "completion": "    return number % 1.0\n"},
    ]
    completions.write_text("\n".join(json.dumps(line) for line in lines))
    config = EvalConfig("humaneval", allow_code_execution=True, completions=str(completions), limit=3)
    summary = run_eval(config, tmp_path / "run", progress=False)
    correct = {r["id"]: r["correct"] for r in read_samples(tmp_path / "run")}
    assert correct == {"HumanEval/0": False, "HumanEval/1": False, "HumanEval/2": True}  # /1 had no completion
    assert summary["metrics"]["accuracy"]["n"] == 3 and summary["missing_completions"] == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "HumanEval/99", "completion": "x"}', "'HumanEval/99' is not a task of this run"),
        ('{"id": "HumanEval/0", "completion": null}', "a string 'completion'"),
        ('{"id": "HumanEval/0", "completion": "a"}\n{"id": "HumanEval/0", "completion": "b"}', "duplicate id"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_completion_files_name_the_line(tmp_path, line, message):
    completions = tmp_path / "answers.jsonl"
    completions.write_text(line)
    config = EvalConfig("humaneval", allow_code_execution=True, completions=str(completions), limit=3)
    with pytest.raises(ValueError, match=message):
        run_eval(config, tmp_path / "run", progress=False)


def test_shards_no_agent_would_read_are_refused(tmp_path):
    config = EvalConfig("infoqa", model="tiny-random", topology="single", limit=2)
    with pytest.raises(ValueError, match="2 shards for 1 agents"):
        run_eval(config, tmp_path / "run", progress=False)


def test_time_adds_up_across_resumed_parts(tmp_path):
    config = EvalConfig("infoqa", oracle=True, limit=5)
    first = run_eval(config, tmp_path / "run", progress=False)["seconds"]
    assert run_eval(config, tmp_path / "run", resume=True, progress=False)["seconds"] >= first


def test_humaneval_needs_explicit_permission(tmp_path):
    with pytest.raises(PermissionError, match="--allow-code-execution"):
        run_eval(EvalConfig("humaneval", oracle=True), tmp_path / "run", progress=False)


def test_a_real_run_writes_messages_usage_and_a_summary(tmp_path):
    config = EvalConfig("infoqa", model="tiny-random", limit=6, batch_size=4, max_new_tokens=4, agents=2)
    summary = run_eval(config, tmp_path / "run", progress=False)
    rows = read_samples(tmp_path / "run")
    assert len(rows) == 6
    assert {m["agent"] for m in rows[0]["messages"]} == {"agent_1", "agent_2", "decision"}
    assert all("prompt" in m and "usage" in m for m in rows[0]["messages"])
    assert summary["tokens_per_task"]["total_tokens"]["value"] > 0
    assert set(summary["tokens_per_task"]["per_agent"]) == {"agent_1", "agent_2", "decision"}
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["config"]["model"] == "tiny-random" and saved["seed"] == 0 and saved["versions"]["torch"]
    assert saved["models"] == ["tiny-random"] and "model   " in compare_table([tmp_path / "run"])
    assert "tiny-random" in compare_table([tmp_path / "run"]).splitlines()[3]


RUN = """
import sys
from kvmesh.evals.runner import EvalConfig, run_eval
config = EvalConfig("infoqa", model="tiny-random", limit=40, batch_size=2, max_new_tokens=8, agents=2)
run_eval(config, sys.argv[1], resume=sys.argv[2] == "resume", progress=False)
"""


def test_killed_halfway_then_resumed_loses_nothing(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen([sys.executable, "-c", RUN, str(out), "new"], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_samples(out)) < 10:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    finished_before = {r["id"] for r in read_samples(out)}
    assert 10 <= len(finished_before) < 40
    subprocess.run([sys.executable, "-c", RUN, str(out), "resume"], env=env, check=True)
    ids = [r["id"] for r in read_samples(out)]
    assert len(ids) == 40 and len(set(ids)) == 40  # no duplicates, nothing missing
    assert finished_before <= set(ids)
    assert json.loads((out / "summary.json").read_text())["samples"] == 40


@pytest.mark.parametrize(
    ("mode", "sees_all", "sees_any"), [("own", False, True), ("all", True, True), ("none", False, False)]
)
def test_infoqa_shard_conditions(mode, sees_all, sees_any):
    from kvmesh.evals.benchmarks import InfoQA
    from kvmesh.evals.benchmarks.infoqa import generate

    task = generate(1, "test", seed=0)[0]
    sample = InfoQA(shards=mode).samples("test")[0]
    assert sample.id == task.id
    context = sample.task.context or ""
    own = sample.task.shard_for("agent_1", 0) or ""
    assert all(s in context for s in task.shards) is sees_all
    assert bool(context or own) is sees_any
    with pytest.raises(ValueError, match="shards must be one of"):
        InfoQA(shards="some")


@pytest.mark.slow
def test_infoqa_answers_need_the_shards_with_smollm(tmp_path, smollm):
    """The calibration the benchmark rests on, on validation tasks: reading every shard beats reading none."""
    accuracy = {}
    for mode in ("all", "none"):
        config = EvalConfig("infoqa", topology="single", shards=mode, split="validation", limit=30, max_new_tokens=32)
        accuracy[mode] = run_eval(config, tmp_path / mode, progress=False)["metrics"]["accuracy"]["value"]
    assert accuracy["none"] <= 0.1 and accuracy["all"] >= accuracy["none"] + 0.2, accuracy


def test_a_failed_start_leaves_nothing_that_blocks_the_retry(tmp_path):
    out = tmp_path / "run"
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(Exception, match="emptydir"):
        run_eval(EvalConfig("infoqa", model=str(empty), limit=1), out, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="2 shards for 1 agents"):  # shards that do not fit the team
        run_eval(EvalConfig("infoqa", model="tiny-random", topology="single", limit=1), out, progress=False)
    assert not out.exists()
    config = EvalConfig("infoqa", model="tiny-random", limit=1, max_new_tokens=2, agents=2)
    assert run_eval(config, out, progress=False)["samples"] == 1  # the corrected command just runs


def test_resume_refuses_inputs_whose_content_changed(tmp_path):
    spec, data = tmp_path / "team.yaml", tmp_path / "tasks.jsonl"
    spec.write_text("model: tiny-random\nagents: [{name: a, max_new_tokens: 2}, {name: b, max_new_tokens: 2}]\n")
    rows = [
        json.dumps({"id": f"t{i}", "question": f"Who has item {i}?", "answer": "a", "shards": ["a has it", "b"]})
        for i in range(3)
    ]
    data.write_text("\n".join(rows) + "\n")
    config = EvalConfig("infoqa", spec=str(spec), data_path=str(data), limit=2)
    run_eval(config, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert not {"model", "agents", "max_new_tokens"} & set(saved)  # a spec run records its team instead
    assert [a["max_new_tokens"] for a in saved["team"]["agents"]] == [2, 2] and set(saved["inputs"]) == {"spec", "data"}
    data.write_text("\n".join(rows[::-1]) + "\n")
    with pytest.raises(RunDirectoryError, match=r"changed: inputs\.data\)"):
        run_eval(config, tmp_path / "run", resume=True, progress=False)
    data.write_text("\n".join(rows) + "\n")
    spec.write_text(spec.read_text().replace("max_new_tokens: 2}", "max_new_tokens: 3}"))
    with pytest.raises(RunDirectoryError, match=r"changed: inputs\.spec, team\.agents"):
        run_eval(config, tmp_path / "run", resume=True, progress=False)


def test_an_oracle_run_draws_the_team_it_stands_in_for_and_a_too_large_limit_is_said(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="kvmesh"):
        run_eval(EvalConfig("infoqa", oracle=True, limit=1000), tmp_path / "run", progress=False)
    assert "--limit 1000 but the test split has 200 samples to run" in caplog.text
    graph = json.loads((tmp_path / "run" / "graph.json").read_text())
    assert graph["graph"]["agents"] == ["agent_1", "agent_2", "agent_3"] and graph["decision"] == "decision"


def test_an_eval_whose_shard_cannot_fit_is_refused_before_any_call(tmp_path):
    data = tmp_path / "tasks.jsonl"
    huge = {"id": "big", "question": "Who has the key?", "answer": "a", "shards": ["the key. " * 6_000, "b"]}
    data.write_text(json.dumps(huge) + "\n")
    config = EvalConfig("infoqa", model="tiny-random", data_path=str(data), agents=2, limit=1)
    with pytest.raises(ContextLengthError, match=r"own text for agent 'agent_1' \(task big\) is 1\d,\d{3} tokens"):
        run_eval(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("rounds", "resumes"), [(1, True), (2, False)])
def test_a_run_saved_before_temporal_edges_resumes_only_if_its_team_is_unchanged(tmp_path, rounds, resumes):
    config = EvalConfig("infoqa", model="tiny-random", agents=2, rounds=rounds, max_new_tokens=2, limit=2)
    out = tmp_path / "run"
    run_eval(config, out, progress=False)
    saved = json.loads((out / "config.json").read_text())
    for newer in ("temporal", "channels", "team", "inputs"):  # what older code did not record
        saved.pop(newer)
    (out / "config.json").write_text(json.dumps(saved))
    if resumes:
        assert run_eval(config, out, resume=True, progress=False)["samples"] == 2
    else:  # its rounds ran without temporal edges, which a preset now gets: another team
        with pytest.raises(RunDirectoryError, match=r"changed: temporal\)"):
            run_eval(config, out, resume=True, progress=False)


def test_a_gsm8k_path_from_the_home_folder_is_recorded(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "gsm8k").mkdir(parents=True)
    row = json.dumps({"question": "What is 17 * 3?", "answer": "17 * 3 = 51\n#### 51"})
    for name in ("train.jsonl", "test.jsonl"):
        (home / "gsm8k" / name).write_text(row + "\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KVMESH_GSM8K_PATH", "~/gsm8k")
    run_eval(EvalConfig("gsm8k", oracle=True, limit=1), tmp_path / "run", progress=False)
    assert set(json.loads((tmp_path / "run" / "config.json").read_text())["inputs"]) == {"data"}


def test_kv_select_calibrates_on_the_train_split_only():
    from kvmesh.evals.runner import calibration_tasks

    with pytest.raises(ConfigError, match="calibrate must be 0 or at least 16"):
        EvalConfig("infoqa", channel="kv-select", calibrate=3)
    with pytest.raises(ConfigError, match=r"layer_fraction: fraction must be in \(0, 1\]"):
        EvalConfig("infoqa", channel="kv-select", channels={"kv-select": {"fraction": 0}})
    with pytest.raises(ConfigError, match="which split train contains: score split test"):
        calibration_tasks(EvalConfig("infoqa", channel="kv-select", split="train"))
    with pytest.raises(ConfigError, match="which split all contains"):  # all of HumanEval holds its train split
        calibration_tasks(EvalConfig("humaneval", channel="kv-select", allow_code_execution=True))
    humaneval = calibration_tasks(EvalConfig("humaneval", channel="kv-select", allow_code_execution=True, split="test"))
    scored = {s.id for s in make_benchmark("humaneval", allow_code_execution=True).samples("test")}
    assert len(humaneval) == 16 and not {t.id for t in humaneval} & scored
    tasks = calibration_tasks(EvalConfig("infoqa", channel="kv-select"))
    test_questions = {s.task.question for s in InfoQA().samples("test")}
    assert len(tasks) == 16 and not {t.question for t in tasks} & test_questions


def test_kv_select_calibration_on_a_file_reads_its_train_split_and_never_a_scored_task(tmp_path):
    from kvmesh.evals.runner import calibration_tasks

    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(t.to_json() + "\n" for t in generate(60, "test", seed=4)))
    file = InfoQA(str(data))
    with pytest.raises(ConfigError, match="which split all contains"):  # scoring a whole file: every task is test
        calibration_tasks(EvalConfig("infoqa", channel="kv-select", data_path=str(data)))
    for scored in ("validation", "test"):
        tasks = calibration_tasks(EvalConfig("infoqa", channel="kv-select", data_path=str(data), split=scored))
        assert len(tasks) == 16 and {t.id for t in tasks} <= {s.id for s in file.samples("train")}
        assert not {t.id for t in tasks} & {s.id for s in file.samples(scored)}


def test_a_calibrated_run_records_its_calibration_tasks_which_it_never_scores(tmp_path):
    config = EvalConfig("infoqa", model="tiny-random", agents=2, max_new_tokens=2, limit=3, channel="kv-select")
    summary = run_eval(config, tmp_path / "run", progress=False)
    scored = {line["id"] for line in read_samples(tmp_path / "run")}
    train = {s.id for s in InfoQA().samples("train")}
    assert len(summary["calibrated_on"]) == 16 and set(summary["calibrated_on"]) <= train
    assert len(scored) == 3 and not scored & set(summary["calibrated_on"])
    uncalibrated = run_eval(
        EvalConfig("infoqa", model="tiny-random", agents=2, max_new_tokens=2, limit=1),
        tmp_path / "text",
        progress=False,
    )
    assert "calibrated_on" not in uncalibrated  # a text team calibrates nothing


def test_a_run_saved_with_per_channel_fields_resumes_with_the_same_channel_settings(tmp_path):
    """Runs saved before `channels` recorded `anchors` and `layer_fraction` at the top level: they resume when
    today's settings are the same, and a different setting is still a change."""
    from kvmesh.evals.channel_settings import channels_field
    from kvmesh.runs import Comparison

    config = EvalConfig("infoqa", model="tiny-random", agents=2, max_new_tokens=2, limit=2)
    out = tmp_path / "run"
    run_eval(config, out, progress=False)
    saved = json.loads((out / "config.json").read_text())
    saved.pop("channels")
    (out / "config.json").write_text(json.dumps(saved | {"anchors": None, "layer_fraction": 0.3}))
    assert run_eval(config, out, resume=True, progress=False)["samples"] == 2

    rules = Comparison(upgrade=channels_field)
    old = {"channel": "kv-select", "anchors": None, "layer_fraction": 0.5, "seed": 0}
    same = EvalConfig("infoqa", channel="kv-select", channels={"kv-select": {"fraction": 0.5}})
    assert rules.changes(old, {"channel": "kv-select", "channels": same.channels, "seed": 0}) == []
    assert rules.changes(old, {"channel": "kv-select", "channels": {}, "seed": 0}) == ["channels.kv-select"]
