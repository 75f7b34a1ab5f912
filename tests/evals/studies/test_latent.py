"""`kvmesh bench latent` on the tiny random model: every mode on the same tasks, resumable, one JSON object."""

import json

import pytest

from kvmesh.cli import main
from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks.infoqa import InfoQA
from kvmesh.evals.studies.latent import (
    RECEIVER_PROMPT,
    SENDER,
    SENDER_PROMPT,
    LatentStudyConfig,
    _pair,
    run_study,
    tasks_for,
)

SMALL = {"model": "tiny-random", "limit": 3, "batch_size": 3, "message_tokens": 3, "answer_tokens": 3}


def test_every_mode_runs_the_same_tasks_and_resumes_after_what_it_finished(tiny, tmp_path):
    config = LatentStudyConfig(**SMALL, fractions=[50, 100], out=str(tmp_path))
    lines = []
    result = run_study(config, progress=lines.append)
    names = [m["name"] for m in result["modes"]]
    assert names == ["none", "text", "kv-select@50", "kv-select@100", "skyline"]
    modes = {m["name"]: m for m in result["modes"]}
    assert all(m["tasks"] == 3 and 0 <= m["accuracy"] <= 1 for m in modes.values())
    assert modes["none"]["kv_bytes"] == modes["text"]["kv_bytes"] == modes["skyline"]["kv_bytes"] == 0
    assert 0 < modes["kv-select@50"]["kv_bytes"] < modes["kv-select@100"]["kv_bytes"]
    assert modes["kv-select@100"]["generated_tokens"] < modes["text"]["generated_tokens"]  # the sender is silent
    assert modes["kv-select@50"]["layers"] == {"tiny-random": [0]}  # 50% of 2 layers: layer 0 (kept first)
    assert result["calibration"]["tasks"] == 16 and len(result["calibration"]["scores"]) == 2
    assert (tmp_path / "plot.png").stat().st_size > 0
    saved = [json.loads(line) for line in (tmp_path / "modes.jsonl").read_text().splitlines()]
    assert [r["name"] for r in saved] == ["calibration", *names]
    lines.clear()
    again = run_study(config, progress=lines.append)  # nothing left to run: every mode is read back
    assert again["modes"] == result["modes"] and not any(line.endswith(" tasks") for line in lines)
    with pytest.raises(ConfigError, match=r"other settings \(limit\)"):
        run_study(LatentStudyConfig(**{**SMALL, "limit": 2}, fractions=[50, 100], out=str(tmp_path)))


def test_the_sender_alone_holds_the_shards():
    sample = InfoQA().samples("test")[0]
    (task,) = tasks_for([sample], SENDER)
    assert task.question == sample.task.question and list(task.shards) == [SENDER]
    assert task.shards[SENDER] == "\n".join(sample.task.shards)
    assert tasks_for([sample], None)[0].shards is None


def test_each_agent_is_told_the_module_s_prompt_as_its_system_prompt():
    team = _pair(LatentStudyConfig(), "text")
    assert [agent.system_text() for agent in team.agents] == [SENDER_PROMPT, RECEIVER_PROMPT]


def test_json_names_the_modes(tiny, capsys):
    assert main(["bench", "latent", *_flags(SMALL), "--fractions", "100", "--calibrate", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in report["modes"]] == ["none", "text", "kv-select@100", "skyline"]
    keys = {"name", "accuracy", "seconds_per_task", "generated_tokens", "kv_bytes"}
    assert all(keys <= set(m) for m in report["modes"])


def test_bad_fractions_are_refused():
    with pytest.raises(ConfigError, match=r"fractions.*\[0, 120\]"):
        LatentStudyConfig(fractions=[0, 120])


def _flags(settings: dict) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def test_only_runs_the_modes_it_names(tiny):
    result = run_study(LatentStudyConfig(**SMALL, fractions=[100], only=["none", "skyline"]), progress=print)
    assert [m["name"] for m in result["modes"]] == ["none", "skyline"] and result["calibration"] == {}
    with pytest.raises(ConfigError, match=r"names no mode \['kv-select@30'\]"):
        run_study(LatentStudyConfig(**SMALL, fractions=[100], only=["kv-select@30"]))
