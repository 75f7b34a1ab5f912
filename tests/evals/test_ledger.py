"""Test scorings are counted per configuration: a second folder is a second look at test, a resume is not, and
validation runs are not counted."""

import json

from kvmesh.evals.ledger import fingerprint, scorings
from kvmesh.evals.runner import EvalConfig, run_eval


def settings(**overrides):
    base = {
        "topology": "single",
        "shards": "all",
        "model": "tiny-random",
        "limit": 2,
        "max_new_tokens": 4,
        "batch_size": 2,
    }
    return EvalConfig("infoqa", **(base | overrides))


def test_each_fresh_test_run_of_a_configuration_is_counted_once(tmp_path, tiny):
    first = run_eval(settings(), tmp_path / "a", progress=False)
    assert first["test_scorings"] == 1 and first["split"] == {
        "source": "generator",
        "by": "generator",
        "seed": 0,
        "split": "test",
    }
    resumed = run_eval(settings(), tmp_path / "a", resume=True, progress=False)
    assert resumed["test_scorings"] == 1
    again = run_eval(settings(batch_size=1), tmp_path / "b", progress=False)  # batch size changes no score
    assert again["test_scorings"] == 2
    other = run_eval(settings(seed=1), tmp_path / "c", progress=False)
    assert other["test_scorings"] == 1
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["test_scorings"] == 2


def test_validation_runs_are_not_test_scorings(tmp_path, tiny):
    summary = run_eval(settings(split="validation"), tmp_path / "v", progress=False)
    assert "test_scorings" not in summary and summary["split"]["split"] == "validation"


def test_the_fingerprint_ignores_speed_settings_only():
    assert fingerprint({"a": 1, "batch_size": 8}) == fingerprint({"a": 1, "batch_size": 2})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert scorings("never-seen") == 0


def test_kvmesh_eval_says_when_a_configuration_was_scored_on_test_before(tmp_path, tiny, capsys):
    from kvmesh.cli import main

    flags = ["eval", "infoqa", "--model", "tiny-random", "--topology", "single", "--shards", "all", "--limit", "2"]
    flags += ["--max-new-tokens", "2"]
    assert main([*flags, "--out", str(tmp_path / "a")]) == 0
    assert "scored" not in capsys.readouterr().err
    assert main([*flags, "--out", str(tmp_path / "b")]) == 0
    assert "scored 2 times on this machine" in capsys.readouterr().err
    assert main([*flags, "--split", "validation", "--out", str(tmp_path / "v")]) == 0
    assert "scored" not in capsys.readouterr().err
