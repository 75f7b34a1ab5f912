"""Paired comparison of two runs (`kvmesh.evals.paired`): pairing by id, McNemar, bootstrap, refusals."""

import json
import random

import pytest

from kvmesh.evals.paired import compare_runs, paired_comparison
from kvmesh.evals.store import open_run


def sample(task: int, correct: bool, total: int = 100, output: int = 10, seconds: float = 1.0) -> dict:
    """A sample line as the eval runner writes it for a team run (usage from `UsageReport.to_dict`)."""
    usage = {
        "input_tokens": total - output,
        "output_tokens": output,
        "total_tokens": total,
        "input_token_details": {"cache_read": 0},
        "calls": 2,
    }
    return {
        "id": f"task-{task}",
        "gold": f"gold-{task}",
        "correct": correct,
        "usage": {"total": usage, "wall_time_s": seconds},
    }


def no_usage(line: dict) -> dict:
    """The same line as an oracle or given-completions run writes it: no model ran, so no usage."""
    return {key: value for key, value in line.items() if key != "usage"}


def mixed_runs() -> tuple[list[dict], list[dict]]:
    """Two runs on tasks 0..11 that differ in correctness, tokens and time, task by task."""
    reference = [sample(i, i % 3 == 0, total=200 + 10 * i, output=20 + i, seconds=2.0 + i / 10) for i in range(12)]
    other = [sample(i, i % 2 == 0, total=150 + 3 * i, output=12 + i % 4, seconds=1.5 + i / 7) for i in range(12)]
    return reference, other


def test_known_counts_give_the_exact_mcnemar_p_and_the_mean_differences():
    # tasks 0-4: only the other run is right; tasks 5-9: both right
    reference = [sample(i, i >= 5, total=300 + i, output=30) for i in range(10)]
    other = [sample(i, True, total=250 + 2 * i, output=20) for i in range(10)]
    result = paired_comparison(reference, other)
    assert result["n"] == 10 and result["only_in_reference"] == result["only_in_other"] == 0
    assert result["accuracy"] == {"reference": 0.5, "other": 1.0}
    assert result["discordant"] == {"only_reference": 0, "only_other": 5}
    assert result["mcnemar_p"] == pytest.approx(0.0625)
    assert result["accuracy_difference"]["value"] == pytest.approx(0.5)
    low, high = result["accuracy_difference"]["ci95"]
    assert 0.0 < low < 0.5 < high <= 1.0
    total = result["per_task"]["total_tokens"]
    assert total["reference"] == pytest.approx(304.5) and total["other"] == pytest.approx(259.0)
    assert total["value"] == pytest.approx(259.0 - 304.5)  # mean of (250 + 2i) - (300 + i)
    assert total["ci95"][0] < total["value"] < total["ci95"][1]
    assert result["per_task"]["output_tokens"] == {
        "reference": 30.0,
        "other": 20.0,
        "value": -10.0,
        "ci95": [-10.0, -10.0],
        "n": 10,
    }
    assert result["per_task"]["seconds"]["value"] == 0.0 and result["skipped"] == {}


def test_tasks_only_one_run_holds_change_nothing():
    reference, _ = mixed_runs()
    # the other run: the same lines on the shared tasks, plus tasks the reference never ran that it gets right
    # cheaply; counting them would move its accuracy, tokens and time
    extra = [sample(i, True, total=10, output=1, seconds=0.1) for i in range(12, 20)]
    result = paired_comparison(reference, [*reference, *extra])
    assert result["n"] == 12 and result["only_in_reference"] == 0 and result["only_in_other"] == 8
    assert result["accuracy"]["reference"] == result["accuracy"]["other"] == pytest.approx(4 / 12)
    assert result["mcnemar_p"] == 1.0 and result["discordant"] == {"only_reference": 0, "only_other": 0}
    difference = result["accuracy_difference"]
    assert difference["value"] == 0.0 and difference["n"] == 12
    assert difference["ci95"][0] < 0 < difference["ci95"][1]  # no discordant task: no evidence either way
    for key in ("total_tokens", "output_tokens", "seconds"):
        assert result["per_task"][key]["value"] == 0.0 and result["per_task"][key]["ci95"] == [0.0, 0.0]


def test_sample_order_changes_nothing():
    reference, other = mixed_runs()
    shuffled_reference, shuffled_other = reference[:], other[:]
    random.Random(5).shuffle(shuffled_reference)
    random.Random(6).shuffle(shuffled_other)
    assert shuffled_reference != reference
    assert paired_comparison(shuffled_reference, shuffled_other) == paired_comparison(reference, other)


def test_swapping_the_runs_flips_every_difference():
    reference, other = mixed_runs()
    forward = paired_comparison(reference, [*other, sample(40, True)])
    backward = paired_comparison([*other, sample(40, True)], reference)
    assert forward["discordant"] == {"only_reference": 2, "only_other": 4}  # i % 3 == 0 vs i % 2 == 0 on 0..11
    assert backward["discordant"] == {"only_reference": 4, "only_other": 2}
    assert backward["mcnemar_p"] == forward["mcnemar_p"]
    assert (forward["only_in_reference"], forward["only_in_other"]) == (0, 1)
    assert (backward["only_in_reference"], backward["only_in_other"]) == (1, 0)
    assert backward["accuracy"] == {
        "reference": forward["accuracy"]["other"],
        "other": forward["accuracy"]["reference"],
    }
    pairs = [(forward["accuracy_difference"], backward["accuracy_difference"])]
    pairs += [(forward["per_task"][key], backward["per_task"][key]) for key in forward["per_task"]]
    assert len(pairs) == 4
    for ahead, behind in pairs:
        assert behind["value"] == pytest.approx(-ahead["value"]) and ahead["value"] != 0
        assert behind["ci95"] == pytest.approx([-ahead["ci95"][1], -ahead["ci95"][0]])


def test_the_bootstrap_seed_is_used_and_reproducible():
    reference, other = mixed_runs()
    assert paired_comparison(reference, other, seed=1) == paired_comparison(reference, other, seed=1)
    one, two = (paired_comparison(reference, other, seed=seed)["per_task"]["total_tokens"] for seed in (1, 2))
    assert one["value"] == two["value"] and one["ci95"] != two["ci95"]  # only the resampling moves


def test_runs_without_usage_skip_tokens_and_time_and_say_why():
    reference, other = mixed_runs()
    result = paired_comparison([no_usage(s) for s in reference], other, names=("runs/oracle", "runs/team"))
    assert result["per_task"] == {} and set(result["skipped"]) == {"total_tokens", "output_tokens", "seconds"}
    assert all("runs/oracle" in why and "runs/team" not in why for why in result["skipped"].values())
    assert result["mcnemar_p"] == paired_comparison(reference, other)["mcnemar_p"]  # accuracy still compared
    partly = [no_usage(s) if i < 3 else s for i, s in enumerate(other)]
    skipped = paired_comparison(reference, partly, names=("a", "b"))["skipped"]
    assert skipped["seconds"] == "not recorded by b on 3 of 12 paired tasks"


def test_runs_that_cannot_be_paired_are_refused_by_name():
    reference, other = mixed_runs()
    disjoint = [sample(i, True) for i in range(100, 105)]
    with pytest.raises(ValueError, match=r"runs/a \(12 tasks\) and runs/b \(5 tasks\) share no task id"):
        paired_comparison(reference, disjoint, names=("runs/a", "runs/b"))
    with pytest.raises(ValueError, match=r"runs/b repeats task ids: 'task-3' \(2 times\)"):
        paired_comparison(reference, [*other, other[3]], names=("runs/a", "runs/b"))
    with pytest.raises(ValueError, match=r"runs/a repeats task ids"):
        paired_comparison([*reference, reference[0]], other, names=("runs/a", "runs/b"))
    relabelled = [s | {"gold": "elsewhere"} if s["id"] == "task-4" else s for s in other]
    with pytest.raises(ValueError, match=r"task 'task-4' has gold 'gold-4' in runs/a but 'elsewhere' in runs/b"):
        paired_comparison(reference, relabelled, names=("runs/a", "runs/b"))
    with pytest.raises(ValueError, match="sample 2 is not a scored sample"):
        paired_comparison(reference, [other[0], {"id": "task-1"}])


def write_run(folder, samples: list[dict], batch_size: int = 16):
    """A run folder as `kvmesh eval` leaves it: samples through the store, and a summary.json."""
    with open_run(folder, {"benchmark": "synthetic"}, resume=False) as store:
        for line in samples:
            store.add(line)
    (folder / "summary.json").write_text(json.dumps({"samples": len(samples), "config": {"batch_size": batch_size}}))
    return folder


def row(table: str, label: str) -> list[str]:
    """The cells of the table row starting with `label`, split on the table's two-space column gaps."""
    line = next(line for line in table.splitlines() if line.startswith(label))
    return [cell.strip() for cell in line[len(label) :].split("  ") if cell.strip()]


def test_compare_runs_pairs_each_run_with_the_first(tmp_path):
    reference, other = mixed_runs()
    a = write_run(tmp_path / "a", reference)
    b = write_run(tmp_path / "b", other)
    oracle = write_run(tmp_path / "oracle", [no_usage(s) | {"correct": True} for s in reference[:6]])
    table = compare_runs([a, b, oracle])
    assert table.splitlines()[0].split() == ["paired", "with", str(a), str(b), str(oracle)]
    assert row(table, "tasks paired") == ["12", "6"]
    assert row(table, "tasks only in reference / only in this run") == ["0 / 0", "6 / 0"]
    forward = paired_comparison(reference, other)
    assert row(table, "McNemar exact p")[0] == f"{forward['mcnemar_p']:.3g}"
    assert row(table, "right only in reference / only in this run") == ["2 / 4", "0 / 4"]
    assert row(table, "total tokens/task: reference -> this run")[1] == "-"
    assert f"{oracle}: total tokens, generated tokens, seconds not compared: not recorded by {oracle}" in table
    assert "batch sizes differ" not in table


def test_compare_runs_notes_batch_sizes_and_needs_two_runs(tmp_path):
    reference, other = mixed_runs()
    a = write_run(tmp_path / "a", reference, batch_size=1)
    b = write_run(tmp_path / "b", other, batch_size=8)
    assert f"batch sizes differ ({a} 1, {b} 8)" in compare_runs([a, b])
    with pytest.raises(ValueError, match="two or more runs"):
        compare_runs([a])
    with pytest.raises(FileNotFoundError, match="finished `kvmesh eval` run"):
        compare_runs([a, tmp_path / "missing"])


def test_the_accuracy_interval_agrees_with_mcnemar_when_few_tasks_are_discordant():
    """4 of 200 tasks discordant, all one way: McNemar p = 0.125, so the interval must include 0 (a percentile
    bootstrap of the per-task differences excludes it); 30 against 10 must exclude it (p = 0.002)."""
    reference = [sample(i, i < 50) for i in range(200)]
    other = [sample(i, i < 46) for i in range(200)]
    result = paired_comparison(reference, other)
    assert result["mcnemar_p"] == pytest.approx(0.125)
    low, high = result["accuracy_difference"]["ci95"]
    assert low < -0.02 < 0 < high
    reference = [sample(i, i < 60) for i in range(200)]  # 30 only here (30-59), 10 only in the other (60-69)
    other = [sample(i, i < 30 or 60 <= i < 70) for i in range(200)]
    result = paired_comparison(reference, other)
    assert result["mcnemar_p"] < 0.01 and result["accuracy_difference"]["ci95"][1] < 0
