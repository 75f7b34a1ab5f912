"""Test scorings are counted per configuration and per test set: a second folder is a second look, a resume is
not, a run stopped after its first scored task is one, a subset of the same test split is the same
configuration, and validation runs are not counted."""

import json

import pytest

from kvmesh.evals.ledger import ScoringKeys, fingerprint
from kvmesh.evals.runner import EvalConfig, run_eval


def settings(**overrides):
    base = {"topology": "single", "shards": "all", "model": "tiny-random", "limit": 2, "max_new_tokens": 4}
    return EvalConfig("infoqa", **(base | {"batch_size": 2} | overrides))


def test_each_fresh_test_run_of_a_configuration_is_counted_once(tmp_path, tiny):
    first = run_eval(settings(), tmp_path / "a", progress=False)
    assert first["test_scorings"] == 1 and first["test_set_scorings"] == 1
    assert first["split"] == {"source": "generator", "by": "generator", "seed": 0, "split": "test"}
    resumed = run_eval(settings(), tmp_path / "a", resume=True, progress=False)
    assert resumed["test_scorings"] == 1 and resumed["test_set_scorings"] == 1
    again = run_eval(settings(batch_size=1, limit=1), tmp_path / "b", progress=False)  # a subset: the same team
    assert again["test_scorings"] == 2 and again["test_set_scorings"] == 2
    other = run_eval(settings(max_new_tokens=3), tmp_path / "c", progress=False)  # another team, same test set
    assert other["test_scorings"] == 1 and other["test_set_scorings"] == 3
    elsewhere = run_eval(settings(seed=1), tmp_path / "d", progress=False)  # other generated test tasks
    assert elsewhere["test_scorings"] == 1 and elsewhere["test_set_scorings"] == 1
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["test_scorings"] == 2


def test_a_run_stopped_after_its_first_task_was_a_look(tmp_path, tiny, monkeypatch):
    """Stopped before its summary: the look is counted, and the run that resumes it is that same look."""
    from kvmesh.evals.store import ResultStore

    class Stop(Exception):
        pass

    original = ResultStore.add

    def add_then_stop(self, line):
        original(self, line)
        raise Stop

    monkeypatch.setattr(ResultStore, "add", add_then_stop)
    with pytest.raises(Stop):
        run_eval(settings(), tmp_path / "a", progress=False)
    monkeypatch.setattr(ResultStore, "add", original)
    assert not (tmp_path / "a" / "summary.json").exists()
    second = run_eval(settings(), tmp_path / "b", progress=False)
    assert second["test_scorings"] == 2  # the stopped run counted
    resumed = run_eval(settings(), tmp_path / "a", resume=True, progress=False)
    assert resumed["test_scorings"] == 1  # it was the first look, resumed


def test_validation_runs_and_oracles_are_not_test_scorings(tmp_path, tiny):
    summary = run_eval(settings(split="validation"), tmp_path / "v", progress=False)
    assert "test_scorings" not in summary and summary["split"]["split"] == "validation"
    oracle = run_eval(EvalConfig("infoqa", oracle=True, limit=2), tmp_path / "o", progress=False)
    assert "test_scorings" not in oracle


def test_the_keys_follow_the_team_the_adapters_and_the_data_not_speed_or_paths():
    record = {"benchmark": "infoqa", "split": "test", "seed": 0, "model": "m", "inputs": {"data": "h1"}}
    keys = ScoringKeys.of(record)
    assert ScoringKeys.of(record | {"batch_size": 2, "limit": 5, "spec": "/a/b.json", "data_path": "/x"}) == keys
    assert ScoringKeys.of(record, {"agent": "w2"}).configuration != keys.configuration  # other adapter weights
    assert ScoringKeys.of(record, {"agent": "w2"}).test_set == keys.test_set
    moved = ScoringKeys.of(record | {"inputs": {"data": "h2"}})  # the data file's content changed
    assert moved.configuration != keys.configuration and moved.test_set != keys.test_set
    assert ScoringKeys.of(record | {"model": "n"}).test_set == keys.test_set
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


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
