"""`kvmesh bench latent` on the tiny random model: every mode on the same tasks, timed in rotated rounds, resumable.

Accuracy is checked against an independent run of the same team on a data file whose gold answers are made to
match some of that run's answers, so a study that scored other outputs (another mode's, misaligned tasks) reports
another accuracy; the tiny model alone answers nothing right, which no accuracy check could tell from a bug.
"""

import json
import statistics
from dataclasses import replace

import pytest

from kvmesh.cli import main
from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks.infoqa import InfoQA, normalize_answer, short_answer
from kvmesh.evals.studies.latent import LatentStudyConfig, run_study
from kvmesh.evals.studies.latent_report import format_table
from kvmesh.evals.studies.latent_teams import RECEIVER_PROMPT, SENDER, SENDER_PROMPT, pair_team, tasks_for
from kvmesh.evals.timing import rotation

SMALL = {"model": "tiny-random", "limit": 3, "batch_size": 3, "message_tokens": 3, "answer_tokens": 3}
NAMES = ["none", "text", "kv-select@50", "kv-select@100", "kv-select@100:tokens@50", "kv-select@100+t2", "skyline"]


def check_timing_rows(report: dict, repeats: int) -> None:
    """Each row holds one time per round, its median/min/max per task, and per-round ratios to the text row."""
    modes = {m["name"]: m for m in report["modes"]}
    text = modes["text"]["seconds_per_round"]
    for m in modes.values():
        rounds = m["seconds_per_round"]
        assert len(rounds) == repeats and all(s > 0 for s in rounds)
        per_task = sorted(s / m["tasks"] for s in rounds)
        assert m["seconds_per_task_range"] == pytest.approx([per_task[0], per_task[-1]])
        assert m["seconds_per_task"] == pytest.approx(statistics.median(per_task))
        assert m["vs_text_per_round"] == pytest.approx([a / b for a, b in zip(rounds, text, strict=True)])
        assert m["vs_text"]["median"] == pytest.approx(statistics.median(m["vs_text_per_round"]))
        assert m["outputs_agree"] is True  # greedy: every round wrote the same transcripts


def test_every_mode_and_fraction_is_a_row_timed_in_rotated_rounds_and_resumes(tiny, tmp_path):
    config = LatentStudyConfig(
        **SMALL, fractions=[50, 100], token_fractions=[50, 100], thoughts=[2], warmup=0, out=str(tmp_path)
    )
    result = run_study(config, progress=lambda line: None)
    assert [m["name"] for m in result["modes"]] == NAMES  # token fraction 100 is kv-select@100 itself
    assert result["orders"] == [list(rotation(NAMES, i)) for i in range(3)] and result["repeats"] == 3
    check_timing_rows(result, 3)
    modes = {m["name"]: m for m in result["modes"]}
    assert modes["none"]["kv_bytes"] == modes["text"]["kv_bytes"] == modes["skyline"]["kv_bytes"] == 0
    assert 0 < modes["kv-select@50"]["kv_bytes"] < modes["kv-select@100"]["kv_bytes"]
    assert 0 < modes["kv-select@100:tokens@50"]["kv_bytes"] < modes["kv-select@100"]["kv_bytes"]
    assert modes["kv-select@100"]["generated_tokens"] < modes["text"]["generated_tokens"]  # the sender is silent
    assert modes["kv-select@50"]["layers"] == {"tiny-random": [0]}  # 50% of 2 layers: layer 0 (kept first)
    assert modes["kv-select@100:tokens@50"]["layers"] == {"tiny-random": [0, 1]}
    thinking, plain = modes["kv-select@100+t2"], modes["kv-select@100"]
    assert thinking["latent_steps"] == 2 and plain["latent_steps"] == 0  # per task: the sender's two thoughts
    assert thinking["cache_read"] == plain["cache_read"] + 2 and thinking["kv_bytes"] > plain["kv_bytes"]
    assert result["calibration"]["tasks"] == 16 and len(result["calibration"]["scores"]) == 2
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(result))
    table = format_table(result)
    assert [line.split()[0] for line in table[2 : 2 + len(NAMES)]] == NAMES and len(table) == len(NAMES) + 3

    log = tmp_path / "modes.jsonl"
    saved = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["name"] for r in saved] == ["calibration", "round 0", "round 1", "round 2"]
    lines = []
    again = run_study(config, progress=lines.append)  # nothing left to run: every round is read back
    assert again["modes"] == result["modes"] and lines == []

    log.write_text("".join(json.dumps(r) + "\n" for r in saved[:2]))  # killed after its first round
    resumed = run_study(config, progress=lines.append)
    assert sum(line.startswith("round ") for line in lines) == 2 and not any("calibrating" in x for x in lines)
    assert resumed["orders"] == result["orders"]  # the rotation went on from round 1
    assert [m["seconds_per_round"][0] for m in resumed["modes"]] == [m["seconds_per_round"][0] for m in result["modes"]]
    figures = ("accuracy", "generated_tokens", "input_tokens", "kv_bytes", "cache_read")
    assert [[m[k] for k in figures] for m in resumed["modes"]] == [[m[k] for k in figures] for m in result["modes"]]
    with pytest.raises(ConfigError, match=r"other settings \(repeats\)"):
        run_study(replace(config, repeats=2))


def test_the_text_row_s_accuracy_is_that_of_the_text_team_s_own_answers(tiny, tmp_path):
    settings = {**SMALL, "limit": 4, "batch_size": 4}
    samples = InfoQA().samples("test")[:4]
    team = pair_team(LatentStudyConfig(**settings), "text")  # run here on its own, once, outside the study
    answers = [short_answer(r.answer or "") for r in team.run_batch(tasks_for(samples, SENDER))]
    # gold answers: the team's own answer for tasks 0 and 2 (whatever the random model wrote), the real one else
    golds = [answers[i] if i % 2 == 0 else s.gold for i, s in enumerate(samples)]
    assert normalize_answer(answers[0]) and normalize_answer(answers[2])  # something to match
    assert normalize_answer(answers[1]) != normalize_answer(golds[1])
    assert normalize_answer(answers[3]) != normalize_answer(golds[3])
    data = tmp_path / "tasks.jsonl"
    rows = [
        {"id": s.id, "question": s.task.question, "answer": g, "shards": s.task.shards}
        for s, g in zip(samples, golds, strict=True)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    config = LatentStudyConfig(**settings, data_path=str(data), only=["none", "text"], repeats=2, warmup=1)
    report = run_study(config, progress=lambda line: None)
    modes = {m["name"]: m for m in report["modes"]}
    assert report["tasks"] == 4 and modes["text"]["accuracy"] == 0.5  # every task of the file, scored as run
    assert modes["none"]["accuracy"] == 0.0  # the receiver alone wrote other answers than the relay's
    check_timing_rows(report, 2)
    paired = modes["none"]["paired_vs_text"]  # on the same 4 tasks: text alone solved 0 and 2
    assert (paired["difference"], paired["only_text"], paired["only_mode"], paired["mcnemar_p"]) == (-0.5, 2, 0, 0.5)
    assert "paired_vs_text" not in modes["text"]


def test_seeds_calibrate_on_other_training_tasks_and_score_the_same_test_tasks(tiny, tmp_path, capsys):
    out = tmp_path / "seeds"
    flags = ["--model", "tiny-random", "--limit", "3", "--batch-size", "3", "--message-tokens", "2"]
    flags += ["--answer-tokens", "2", "--repeats", "1", "--warmup", "0", "--only", "text", "kv-select@100"]
    assert main(["bench", "latent", *flags, "--seeds", "0", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["across_seeds"]["kv-select@100/accuracy"]["n"] == 2
    assert "kv-select@100/accuracy_minus_text" in summary["across_seeds"]
    runs = [json.loads((out / f"seed-{seed}" / "summary.json").read_text()) for seed in (0, 1)]
    calibrated = [set(run["calibration"]["ids"]) for run in runs]
    assert len(calibrated[0]) == 16 and calibrated[0] != calibrated[1]  # the seed draws the calibration tasks
    scored = {s.id for s in InfoQA().samples("test")[:3]}  # data_seed 0 for both seeds
    assert all(not ids & scored and all("-train-" in i for i in ids) for ids in calibrated)
    assert "kv-select@100/accuracy" in capsys.readouterr().out


def test_the_sender_alone_holds_the_shards():
    sample = InfoQA().samples("test")[0]
    (task,) = tasks_for([sample], SENDER)
    assert task.question == sample.task.question and list(task.shards) == [SENDER]
    assert task.shards[SENDER] == "\n".join(sample.task.shards)
    assert tasks_for([sample], None)[0].shards is None


def test_each_agent_is_told_the_module_s_prompt_as_its_system_prompt():
    team = pair_team(LatentStudyConfig(), "text")
    assert [agent.system_text() for agent in team.agents] == [SENDER_PROMPT, RECEIVER_PROMPT]


def test_json_names_the_modes_and_the_table_prints_every_row(tiny, capsys):
    flags = [*_flags(SMALL), "--fractions", "100", "--token-fractions", "30", "--thoughts", "1", "3"]
    assert main(["bench", "latent", *flags, "--repeats", "1", "--warmup", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = ["none", "text", "kv-select@100", "kv-select@100:tokens@30", "kv-select@100+t1", "kv-select@100+t3"]
    names.append("skyline")
    assert [m["name"] for m in report["modes"]] == names and report["repeats"] == 1
    keys = {"name", "accuracy", "seconds_per_task", "seconds_per_task_range", "vs_text", "generated_tokens"}
    assert all(keys <= set(m) for m in report["modes"])
    printed = [line.split()[0] for line in format_table(report)]
    assert all(name in printed for name in names)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match=r"fractions.*\[0, 120\]"):
        LatentStudyConfig(fractions=[0, 120])
    with pytest.raises(ConfigError, match=r"token_fractions.*\[0\]"):
        LatentStudyConfig(token_fractions=[0])
    with pytest.raises(ConfigError, match=r"repeats.*at least 1"):
        LatentStudyConfig(repeats=0)
    with pytest.raises(ConfigError, match=r"warmup.*0 or more"):
        LatentStudyConfig(warmup=-1)
    with pytest.raises(ConfigError, match=r"thoughts.*\[0\]"):
        LatentStudyConfig(thoughts=[0])


def _flags(settings: dict) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def test_only_runs_the_modes_it_names(tiny):
    config = LatentStudyConfig(**SMALL, fractions=[100], only=["none", "skyline"], repeats=1, warmup=0)
    result = run_study(config, progress=lambda line: None)
    assert [m["name"] for m in result["modes"]] == ["none", "skyline"] and result["calibration"] == {}
    assert result["reference"] is None and "vs_text" not in result["modes"][0]  # no text row to divide by
    with pytest.raises(ConfigError, match=r"names no mode \['kv-select@30'\]"):
        run_study(LatentStudyConfig(**SMALL, fractions=[100], only=["kv-select@30"]))


def test_tasks_kv_select_calibrated_on_are_never_scored_and_test_looks_are_counted(tiny, tmp_path):
    """A file holding the very training tasks calibration draws: those are left out of the scored tasks and
    counted; scoring the file twice is two looks at it; a validation split is not a look."""
    from kvmesh.evals.benchmarks.infoqa import generate

    data = tmp_path / "tasks.jsonl"
    train = generate(20, "train")  # calibration takes the first 16 of these (seed 0)
    data.write_text("".join(t.to_json() + "\n" for t in train + generate(30, "test")))
    settings = {
        **SMALL,
        "data_path": str(data),
        "only": ["text", "kv-select@100"],
        "repeats": 1,
        "warmup": 0,
        "limit": 50,
    }
    report = run_study(LatentStudyConfig(**settings, out=str(tmp_path / "a")), progress=lambda line: None)
    assert report["excluded_seen"] == 16 and report["tasks"] == 50 - 16
    assert set(report["calibration"]["ids"]) == {t.id for t in train[:16]}
    assert report["split"]["split"] == "all" and report["test_scorings"] == 1
    again = run_study(LatentStudyConfig(**settings, out=str(tmp_path / "b")), progress=lambda line: None)
    assert again["test_scorings"] == 2 and again["test_set_scorings"] == 2
    validation = LatentStudyConfig(**settings, split="validation", out=str(tmp_path / "v"))
    assert "test_scorings" not in run_study(validation, progress=lambda line: None)
    only_train = tmp_path / "train.jsonl"  # every task in it calibrated
    only_train.write_text("".join(t.to_json() + "\n" for t in train[:16]))
    with pytest.raises(ConfigError, match="no task of split 'all' left to score"):
        run_study(LatentStudyConfig(**{**settings, "data_path": str(only_train)}))
