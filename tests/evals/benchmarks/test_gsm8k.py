"""GSM8K tests read the data through the documented option, KVMESH_GSM8K_PATH (`make test` and CI set it)."""

import os
from pathlib import Path

import pytest

from kvmesh.evals.benchmarks.gsm8k import load_gsm8k
from kvmesh.evals.numbers import extract_flexible, extract_strict, numbers_equal

DATA = os.environ.get("KVMESH_GSM8K_PATH")
needs_data = pytest.mark.skipif(
    not DATA or not Path(DATA, "test.jsonl").is_file(),
    reason="GSM8K data not found: set KVMESH_GSM8K_PATH to a folder with train.jsonl and test.jsonl",
)


@pytest.fixture(scope="module")
def test_split():
    return load_gsm8k("test", DATA)


@needs_data
def test_loads_the_shared_copy_with_stable_ids(test_split):
    assert len(test_split) == 1319
    assert test_split[0].id == "test/0" and test_split[0].gold == "18"
    assert len({p.id for p in test_split}) == 1319


@needs_data
def test_gold_solutions_score_100_percent_with_both_extractors(test_split):
    for problem in test_split:  # an oracle: the reference solution through the same extraction path
        assert numbers_equal(extract_strict(problem.solution), problem.gold)
        assert numbers_equal(extract_flexible(problem.solution), problem.gold)


@needs_data
def test_env_var_and_errors(tmp_path, monkeypatch):
    assert len(load_gsm8k("train")) == 7473  # from the environment variable alone
    with pytest.raises(ValueError, match="split must be one of"):
        load_gsm8k("dev")
    with pytest.raises(FileNotFoundError, match=r"test\.jsonl does not exist"):
        load_gsm8k("test", tmp_path)
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "no final answer"}\n')
    with pytest.raises(ValueError, match="line 1 has no '#### N'"):
        load_gsm8k("test", tmp_path)
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 4"}\n\n')  # a trailing blank line
    assert [p.gold for p in load_gsm8k("test", tmp_path)] == ["4"]
    (tmp_path / "test.jsonl").write_text("{broken\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        load_gsm8k("test", tmp_path)


def test_offline_without_a_path_names_both_ways(monkeypatch):
    monkeypatch.delenv("KVMESH_GSM8K_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="--data-path or KVMESH_GSM8K_PATH") as info:
        load_gsm8k("test")
    assert "openai/gsm8k" in str(info.value)
