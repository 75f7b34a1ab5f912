"""The Optima loop end to end on tiny-random: baselines, one SFT iteration, its held-out score, results and
the plot; a run killed inside its iteration resumes without redoing or duplicating finished rollouts."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict

import pytest

from kvmesh.config import ConfigError
from kvmesh.evals.store import read_samples
from kvmesh.training.optima import loop
from kvmesh.training.optima.config import OptimaConfig

SETTINGS = {
    "model": "tiny-random",
    "iterations": 1,
    "train_tasks": 6,
    "samples": 2,
    "val_tasks": 3,
    "batch_size": 1,
    "max_new_tokens": 6,
    "threshold": -10.0,  # tiny-random never answers right: keep its rollouts anyway
    "epochs": 1,
    "train_batch_size": 4,
    "train_overlong": True,  # its turns never end before the cap
}


def _flags(settings: dict) -> list[str]:
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def test_a_run_killed_inside_its_iteration_resumes_without_redoing_finished_rollouts(tmp_path, monkeypatch):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kvmesh.cli", "optima", "train", "--out", str(out), *_flags(SETTINGS)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rollouts = out / "iteration-1" / "rollouts.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if rollouts.exists() and len(rollouts.read_text().splitlines()) >= SETTINGS["samples"]:
            break
        time.sleep(0.05)
    assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read()[-2000:]}"
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = [json.loads(line) for line in rollouts.read_text().splitlines()]
    finished = {task for task, n in Counter(r["task_id"] for r in before).items() if n == SETTINGS["samples"]}
    assert finished and not (out / "iteration-1" / "train.json").exists()  # killed inside the iteration

    asked = []
    sample = loop.sample_rollouts

    def recording(team, tasks, *args, **kwargs):
        asked.extend(task.id for task in tasks)
        return sample(team, tasks, *args, **kwargs)

    monkeypatch.setattr(loop, "sample_rollouts", recording)
    results = loop.optima_train(OptimaConfig(out=str(out), **SETTINGS), progress=lambda line: None)
    assert not finished & set(asked)  # finished rollouts were not redone
    after = [json.loads(line) for line in rollouts.read_text().splitlines()]
    keys = [(r["task_id"], r["sample"]) for r in after]
    assert len(keys) == len(set(keys)) == SETTINGS["train_tasks"] * SETTINGS["samples"]  # none lost, none twice
    assert {(r["sample"], r["protocol"]) for r in after} == {(0, None), (1, "compact")}  # explore: half compact
    assert [r for r in after if r["task_id"] in finished] == [r for r in before if r["task_id"] in finished]
    assert [p["label"] for p in results["points"]] == ["iteration 0", "prompt-only compact", "iteration 1"]
    point = results["points"][-1]
    assert point["tasks"] == SETTINGS["val_tasks"] and point["split"] == "validation" and point["generated_tokens"] > 0
    assert results["chosen"] == "iteration 1" and "test" not in results  # test is a deliberate step
    validation = {row["id"] for row in read_samples(out / "iteration-1" / "validation")}
    assert validation and not validation & {r["task_id"] for r in after}  # the generator: train, validation apart
    assert point["total_tokens"] > point["generated_tokens"]
    assert (out / "path.png").stat().st_size > 0
    trained = json.loads((out / "iteration-1" / "train.json").read_text())
    assert trained["kind"] == "sft" and trained["examples"] > 0 and trained["losses"]
    adapter = out / "iteration-1" / "adapter" / "adapter_model.safetensors"
    assert adapter.is_file()
    spec = json.loads((out / "iteration-1" / "team.json").read_text())
    assert {agent["adapter"] for agent in spec["agents"]} == {"adapter"}  # relative to team.json: the folder moves
    # a finished run resumes to the same results without training again
    again = loop.optima_train(OptimaConfig(out=str(out), **SETTINGS), progress=lambda line: None)
    assert again["points"] == results["points"]


def test_a_used_folder_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**SETTINGS, "out": str(out), "samples": 5}))
    with pytest.raises(ConfigError, match="other settings"):
        loop.optima_train(OptimaConfig(out=str(out), **SETTINGS))
    with pytest.raises(ConfigError, match="holds a run already"):
        loop.optima_train(OptimaConfig(out=str(out), resume=False, **SETTINGS))
    # how saved rollouts are selected may change until an iteration has trained: recorded, not refused
    saved = asdict(OptimaConfig(out=str(out), **SETTINGS))
    (out / "config.json").write_text(json.dumps({**saved, "threshold": 0.5}))
    lines = []
    loop._check_run(OptimaConfig(out=str(out), **SETTINGS), out, lines.append)
    assert json.loads((out / "config.json").read_text())["changed"] == [{"threshold": [0.5, -10.0]}]
    assert lines == ["resuming with changed threshold (before any training; recorded in config.json)"]
    (out / "iteration-1").mkdir()
    (out / "iteration-1" / "train.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"other settings \(threshold\)"):
        loop._check_run(OptimaConfig(out=str(out), **{**SETTINGS, "threshold": 0.0}), out, lines.append)
    with pytest.raises(ConfigError, match="train split has"):
        loop.OptimaRun(OptimaConfig(out=str(tmp_path / "big"), **{**SETTINGS, "train_tasks": 10**6}))


def test_a_failed_start_leaves_nothing_so_the_corrected_command_is_not_refused(tmp_path, capsys):
    from kvmesh.cli import main

    out = tmp_path / "run"
    # the model is only loaded once the run folder holds its config and the first baseline's spec
    assert main(["optima", "train", "--out", str(out), *_flags({**SETTINGS, "model": "no-such-model"})]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert not out.exists()

    class Started(Exception):
        """Raised at the first progress line: the corrected run got past the run folder's check."""

    def stop(line: str) -> None:
        raise Started(line)

    with pytest.raises(Started, match="iteration 0: scoring on 3 validation"):
        loop.optima_train(OptimaConfig(out=str(out), **SETTINGS), progress=stop)
    assert not out.exists()  # that start failed too, before any result


def test_seeds_on_a_file_keep_train_validation_and_test_apart_and_test_runs_once(tmp_path):
    """Two seeds of a run on a user's file (split by the hash of each id), with --test: every seed trains on
    train ids, chooses on validation ids and is scored on test ids, three disjoint sets; the seeds share the
    data; each tested team is scored on test once and its iteration folder's spec runs as `kvmesh eval --spec`."""
    from kvmesh.evals.benchmarks.infoqa import generate
    from kvmesh.evals.runner import EvalConfig, run_eval

    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(task.to_json() + "\n" for task in generate(40, "test", seed=5)))
    settings = {**SETTINGS, "train_tasks": 2, "samples": 2, "val_tasks": 2, "eval_tasks": 2, "explore": 0.0}
    out = tmp_path / "seeds"
    config = OptimaConfig(out=str(out), data_path=str(data), seeds=[0, 1], test=True, **settings)
    summary = loop.optima_train(config, progress=lambda line: None)
    assert summary["seeds"] == [0, 1] and (out / "seeds.json").is_file()
    figure = summary["across_seeds"]["test/chosen/generated_tokens"]
    assert figure["n"] == 2 and len(figure["per_seed"]) == 2
    assert "test/chosen vs iteration 0/accuracy_difference" in summary["across_seeds"]
    seen = {}
    for seed in (0, 1):
        run = out / f"seed-{seed}"
        train = {
            json.loads(line)["task_id"] for line in (run / "iteration-1" / "rollouts.jsonl").read_text().splitlines()
        }
        validation = {row["id"] for row in read_samples(run / "iteration-1" / "validation")}
        test = {row["id"] for row in read_samples(run / "iteration-1" / "test")}
        assert train and validation and test
        assert train.isdisjoint(validation) and train.isdisjoint(test) and validation.isdisjoint(test)
        seen[seed] = (validation, test)
        results = summary["runs"][seed]
        assert [p["test_scorings"] for p in results["test"]["points"]] == [1, 1, 1]  # baselines: shared, once
        assert set(results["test"]["paired"]) == {"iteration 1 vs iteration 0", "iteration 1 vs prompt-only compact"}
    assert seen[0] == seen[1]  # the seed trains; the data stays
    moved = tmp_path / "moved"
    (out / "seed-0").rename(moved)  # its spec's adapter path is relative: the folder moves with it
    rerun = run_eval(
        EvalConfig("infoqa", spec=str(moved / "iteration-1" / "team.json"), data_path=str(data), split="test", limit=2),
        tmp_path / "rerun",
        progress=False,
    )
    assert rerun["samples"] == 2 and rerun["test_scorings"] == 2  # the same team on the same tasks: a second look
    # on the whole file, the spec leaves out the tasks its adapter trained on
    spec = json.loads((moved / "iteration-1" / "team.json").read_text())
    trained = set(spec["seen_ids"])
    assert trained == {
        json.loads(line)["task_id"] for line in (moved / "iteration-1" / "rollouts.jsonl").read_text().splitlines()
    }
    whole = run_eval(
        EvalConfig("infoqa", spec=str(moved / "iteration-1" / "team.json"), data_path=str(data)),
        tmp_path / "whole",
        progress=False,
    )
    assert whole["samples"] == 40 - len(trained) and whole["excluded_seen"] == len(trained)


def test_the_readmes_relative_out_finishes_and_resumes_under_its_absolute_path(tmp_path, monkeypatch):
    """`kvmesh optima train --out runs/optima` (the README's form): the iteration's spec finds its adapter, and a
    rerun naming the same folder absolutely resumes it instead of refusing a changed spec path."""
    monkeypatch.chdir(tmp_path)
    results = loop.optima_train(OptimaConfig(out="runs/optima", **SETTINGS), progress=lambda line: None)
    assert results["chosen"] == "iteration 1"
    again = loop.optima_train(OptimaConfig(out=str(tmp_path / "runs" / "optima"), **SETTINGS), progress=lambda _: None)

    def figures(points):  # each point's folder is named as that run was given it
        return [{k: v for k, v in point.items() if k != "folder"} for point in points]

    assert figures(again["points"]) == figures(results["points"])


def test_a_failed_start_leaves_nothing_that_refuses_the_corrected_command(tmp_path):
    out = tmp_path / "optima"
    with pytest.raises(Exception, match="no-such-model"):
        loop.optima_train(OptimaConfig(out=str(out), **{**SETTINGS, "model": "no-such-model"}), progress=lambda _: None)
    assert not (out / "config.json").exists()
    results = loop.optima_train(OptimaConfig(out=str(out), **SETTINGS), progress=lambda line: None)
    assert results["chosen"] == "iteration 1"


@pytest.mark.parametrize(("flag", "value"), [("--rank", "0"), ("--epochs", "0"), ("--learning-rate", "-1")])
def test_a_bad_training_number_names_its_flag(flag, value, tmp_path, capsys):
    from kvmesh.cli import main

    assert main(["optima", "train", "--out", str(tmp_path / "run"), flag, value]) == 2
    assert flag in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_ctrl_c_in_optima_train_says_how_to_continue(tmp_path, capsys, monkeypatch):
    from kvmesh.cli import main

    def interrupted(config, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "optima_train", interrupted)  # the loop's own resume is tested above
    out = str(tmp_path / "run")
    assert main(["optima", "train", "--out", out, "--no-resume"]) == 130
    assert f"continue with: kvmesh optima train --out {out}\n" in capsys.readouterr().err
