"""`kvmesh report` through the CLI entry point, on real run folders made without a model (oracle, completions)."""

import json

import pytest

from kvmesh.cli import main
from kvmesh.evals.store import read_samples

TASKS = 6


@pytest.fixture
def runs(tmp_path, capsys):
    """An oracle run and a given-completions run on the same InfoQA tasks; the completions miss tasks 1, 3, 4."""
    oracle = tmp_path / "oracle"
    assert main(["eval", "infoqa", "--oracle", "--limit", str(TASKS), "--out", str(oracle)]) == 0
    wrong = {1, 3, 4}
    lines = [
        {"id": s["id"], "completion": "Answer: nobody" if n in wrong else f"Answer: {s['gold']}"}
        for n, s in enumerate(read_samples(oracle))
    ]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(line) + "\n" for line in lines))
    given = tmp_path / "given"
    command = ["eval", "infoqa", "--completions", str(answers), "--limit", str(TASKS), "--out", str(given)]
    assert main(command) == 0
    capsys.readouterr()
    return oracle, given


def row(text: str, label: str) -> list[str]:
    """The cells after `label` on the line starting with it (columns are two or more spaces apart)."""
    line = next(line for line in text.splitlines() if line.startswith(label))
    return [cell.strip() for cell in line[len(label) :].split("  ") if cell.strip()]


def test_report_prints_the_table_then_each_run_paired_with_the_first(runs, capsys):
    oracle, given = runs
    assert main(["report", str(oracle), str(given)]) == 0
    out = capsys.readouterr().out
    side_by_side, paired = out.index("accuracy "), out.index(f"paired with {oracle}")
    assert side_by_side < paired  # the existing table comes first
    assert row(out[paired:], "tasks paired") == [str(TASKS)]
    assert row(out, "accuracy: reference -> this run") == ["1.000 -> 0.500"]
    assert row(out, "right only in reference / only in this run") == ["3 / 0"]
    assert row(out, "McNemar exact p") == ["0.25"]  # 2 * (1/2)^3
    assert row(out, "  difference [95% Newcombe paired]")[0].startswith("-0.500 [")
    assert f"{given}: total tokens, generated tokens, seconds not compared: not recorded by {oracle}" in out


def test_report_swapped_reverses_the_comparison(runs, capsys):
    oracle, given = runs
    assert main(["report", str(given), str(oracle)]) == 0
    out = capsys.readouterr().out
    assert row(out, "accuracy: reference -> this run") == ["0.500 -> 1.000"]
    assert row(out, "right only in reference / only in this run") == ["0 / 3"]
    assert row(out, "  difference [95% Newcombe paired]")[0].startswith("+0.500 [")


def test_one_run_prints_no_paired_section(runs, capsys):
    oracle, _ = runs
    assert main(["report", str(oracle)]) == 0
    out = capsys.readouterr().out
    assert "accuracy " in out and "paired with" not in out


def test_runs_on_other_tasks_are_refused(runs, tmp_path, capsys):
    oracle, _ = runs
    other_seed = tmp_path / "seed1"  # the generator's seed is in its task ids: other tasks, other ids
    assert main(["eval", "infoqa", "--oracle", "--limit", "3", "--seed", "1", "--out", str(other_seed)]) == 0
    capsys.readouterr()
    assert main(["report", str(oracle), str(other_seed)]) == 2
    error = capsys.readouterr().err
    assert f"{oracle} ({TASKS} tasks) and {other_seed} (3 tasks) share no task id" in error
