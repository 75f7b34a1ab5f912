"""`benchmarks/record_results.py`: finished seeded runs of Optima, designers and the latent bench become results
files whose rendered tables hold the runs' own numbers (means across seeds, p-values in seed order), and folders
that are not such runs are refused, naming the file.

The Optima and designer run folders are written here with the producers' own functions (`seed_figures`,
`write_seed_summary`, `paired_comparison`, `design eval`'s pairing and seed summary) from hand-made samples whose
McNemar p-values are known; the latent bench also runs for real on the tiny random model.
"""

import importlib.util
import json
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from kvmesh.cli import design_eval
from kvmesh.cli import main as kvmesh_main
from kvmesh.evals.paired import paired_comparison
from kvmesh.evals.results import load_result, render_table
from kvmesh.evals.seeds import write_seed_summary
from kvmesh.evals.stats import across_seeds, mean_interval, proportion
from kvmesh.evals.studies import latent
from kvmesh.evals.studies import latent_report as study_report
from kvmesh.evals.timing import Round, Timings
from kvmesh.runs import write_json
from kvmesh.training.optima.config import OptimaConfig
from kvmesh.training.optima.loop import choose_iteration, seed_figures

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "record_results.py"
spec = importlib.util.spec_from_file_location("record_results", SCRIPT)
record_results = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = record_results  # dataclasses and type hints look their module up by name
spec.loader.exec_module(record_results)
KEEP = SCRIPT.with_name("keep_seeds.py")
spec = importlib.util.spec_from_file_location("keep_seeds", KEEP)
keep_seeds = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = keep_seeds
spec.loader.exec_module(keep_seeds)

TASKS = 10
SEEDS = [0, 1, 2]
REFERENCE = {0, 1}  # tasks the reference (iteration 0, the chain, the text relay) gets right
# tasks the trained or latent system gets right, per seed; against REFERENCE the discordant pairs are 6/0, 3/0
# and 1/1, so the exact McNemar p-values are 2/2**6 = 0.031, 2/2**3 = 0.250 and 1
RIGHT = {0: set(range(8)), 1: set(range(5)), 2: {1, 2}}
P_AGAINST_REFERENCE = "0.031, 0.250, 1.000"


def lines(right: set[int]) -> list[dict]:
    """A run's sample lines on the shared tasks: id, gold answer and whether it was right."""
    return [{"id": f"t{i}", "gold": f"answer {i}", "correct": i in right} for i in range(TASKS)]


def save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)


def accuracy(right: set[int]) -> float:
    return len(right) / TASKS


def rendered(path: Path) -> dict[str, dict[str, str]]:
    """The rendered table of a results file: {first cell: {column key: cell as shown}}."""
    result = load_result(path)
    keys = [column["key"] for column in result["columns"]]
    table = [line for line in render_table(result).splitlines() if line.startswith("|")][2:]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table]
    return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}


def interval(values: list[float], spec: str = ".3f") -> str:
    """How a mean across seeds shows in a table, computed here from the per-seed values."""
    figure = across_seeds(values)
    low, high = figure["ci95"]
    assert figure["mean"] == pytest.approx(statistics.mean(values))
    return f"{format(figure['mean'], spec)} [{format(low, spec)}, {format(high, spec)}]"


def record(kind: str, run: Path, tmp_path: Path, name: str = "figure", **flags: str) -> int:
    argv = [kind, str(run), "--name", name, "--title", "a figure", "--results", str(tmp_path / "results")]
    argv += ["--command", flags.pop("command", f"kvmesh {kind} --out {run}")]
    for flag, value in flags.items():
        argv += [f"--{flag}", value]
    return record_results.main(argv)


# --- Optima ------------------------------------------------------------------------------------------------------

# validation accuracy of iterations 1 and 2 per seed: the choice is iteration 2, 1, 2
VALIDATION = {0: (0.3, 0.4), 1: (0.5, 0.35), 2: (0.2, 0.45)}
COMPACT = {0, 1, 2}  # the compact team's right test tasks: against RIGHT, 5/0, 2/0, 0/1 discordant pairs


def point(label: str, split: str, acc: float, generated: float, scorings: int | None = None) -> dict:
    row = {"label": label, "split": split, "accuracy": acc, "accuracy_ci95": [0.0, 1.0], "f1": acc}
    row |= {"generated_tokens": generated, "total_tokens": 10 * generated, "tasks": TASKS, "folder": "x"}
    return row | ({"test_scorings": scorings} if scorings is not None else {})


def optima_seed(seed: int) -> dict:
    """One seed's results.json as `OptimaRun._run` writes it with --test."""
    one, two = VALIDATION[seed]
    points = [point("iteration 0", "validation", 0.25, 70.0), point("prompt-only compact", "validation", 0.3, 40.0)]
    points += [point("iteration 1", "validation", one, 50.0), point("iteration 2", "validation", two, 30.0)]
    chosen = choose_iteration(points)
    runs = {"iteration 0": lines(REFERENCE), "prompt-only compact": lines(COMPACT), chosen: lines(RIGHT[seed])}
    tested = [
        point("iteration 0", "test", accuracy(REFERENCE), 72.0, 1),
        point("prompt-only compact", "test", accuracy(COMPACT), 41.0, 1),
        point(chosen, "test", accuracy(RIGHT[seed]), 30.0 + seed, 2 if seed == 1 else 1),
    ]
    paired = {
        f"{chosen} vs {label}": paired_comparison(runs[label], runs[chosen], names=(label, chosen))
        for label in ("iteration 0", "prompt-only compact")
    }
    return {"points": points, "chosen": chosen, "test": {"points": tested, "paired": paired}, "seconds": 1.0}


def optima_run(out: Path, test: bool = True) -> Path:
    """A finished `optima train --seeds 0 1 2 [--test]` folder: each seed's results.json, then seeds.json."""
    runs = {seed: optima_seed(seed) for seed in SEEDS}
    for seed, results in runs.items():
        if not test:
            del results["test"]
        save(out / f"seed-{seed}" / "results.json", results)
    config = OptimaConfig(out=str(out), seeds=SEEDS, test=test)
    write_seed_summary(out, {seed: seed_figures(results) for seed, results in runs.items()}, config=asdict(config))
    return out


def test_optima_records_each_point_across_seeds_with_paired_p_values_in_seed_order(tmp_path, capsys):
    run = optima_run(tmp_path / "optima")
    command = "kvmesh optima train --seeds 0 1 2 --test --out runs/optima  # 'quoted' as given"
    assert record("optima", run, tmp_path, "optima-infoqa", command=command, notes="Two iterations.") == 0
    path = tmp_path / "results" / "optima-infoqa.json"
    assert str(path) in capsys.readouterr().out
    table = rendered(path)
    chosen = table["chosen iteration (k per seed: 2, 1, 2)"]
    tested = [accuracy(RIGHT[seed]) for seed in SEEDS]
    assert chosen["accuracy"] == interval(tested)
    assert chosen["validation"] == interval([0.4, 0.5, 0.45])  # each seed's chosen iteration on validation
    assert chosen["generated_tokens"] == interval([30.0, 31.0, 32.0], ".1f")
    assert chosen["total_tokens"] == interval([300.0, 310.0, 320.0], ".1f")
    assert chosen["vs_iteration_0"] == interval([t - accuracy(REFERENCE) for t in tested], "+.3f")
    assert chosen["vs_compact"] == interval([t - accuracy(COMPACT) for t in tested], "+.3f")
    assert chosen["p_vs_iteration_0"] == P_AGAINST_REFERENCE
    assert chosen["p_vs_compact"] == "0.062, 0.500, 1.000"  # 2/2**5, 2/2**2, and one pair only the baseline won
    baseline = table["iteration 0"]
    assert baseline["accuracy"] == "0.200 [0.200, 0.200]" and baseline["validation"] == "0.250 [0.250, 0.250]"
    assert baseline["vs_iteration_0"] == baseline["p_vs_iteration_0"] == "-"
    assert table["prompt-only compact"]["generated_tokens"] == "41.0 [41.0, 41.0]"
    result = load_result(path)
    assert result["command"] == command and result["seeds"] == SEEDS
    assert result["test_scorings"] == 2  # seed 1's chosen iteration was scored on test twice
    assert result["config"]["iterations"] == 2 and result["config"]["test"] is True
    assert result["notes"].endswith("Two iterations.")


def test_optima_refuses_folders_that_are_not_a_finished_seeded_tested_run(tmp_path, capsys):
    single = tmp_path / "single"
    save(single / "results.json", optima_seed(0))  # one seed, without --seeds
    with pytest.raises(record_results.RunError, match=re.escape(f"{single / 'seeds.json'} does not exist")):
        record_results.optima_table(single)

    untested = optima_run(tmp_path / "untested", test=False)
    with pytest.raises(record_results.RunError, match="without --test"):
        record_results.optima_table(untested)

    run = optima_run(tmp_path / "optima")
    (run / "seed-1" / "results.json").unlink()  # a seed's run gone
    assert record("optima", run, tmp_path) == 2
    assert f"{run / 'seed-1' / 'results.json'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()

    run = optima_run(tmp_path / "torn")
    seeds = json.loads((run / "seeds.json").read_text())
    del seeds["across_seeds"]["test/chosen/accuracy"]  # a figure some seed lacked
    save(run / "seeds.json", seeds)
    with pytest.raises(record_results.RunError, match="no figure 'test/chosen/accuracy'"):
        record_results.optima_table(run)


def single_seed_run(out: Path, seed: int, **settings) -> Path:
    """A finished `optima train --seeds SEED --test` folder: one seed per command, as a session that has time for
    one seed runs it."""
    save(out / f"seed-{seed}" / "results.json", optima_seed(seed))
    config = OptimaConfig(out=str(out), seeds=[seed], test=True, **settings)
    write_seed_summary(out, {seed: seed_figures(optima_seed(seed))}, config=asdict(config))
    return out


def test_seeds_kept_one_session_at_a_time_record_the_same_table_as_one_three_seed_run(tmp_path, capsys):
    into = tmp_path / "kept"
    for seed in (2, 0, 1):  # each seed in a run folder of its own, kept in any order
        run = single_seed_run(tmp_path / f"session-{seed}", seed)
        assert keep_seeds.main(["optima", str(run), "--seed", str(seed), "--into", str(into)]) == 0
        shutil.rmtree(run)  # the machine that ran it is gone
        remaining = sorted({0, 1, 2} - set(keep_seeds.kept_seeds(into, "optima")))
        capsys.readouterr()
        assert keep_seeds.main(["missing", str(into), "--kind", "optima", "--seeds", "0", "1", "2"]) == 0
        assert capsys.readouterr().out.split() == [str(s) for s in remaining]
    assert record("optima", into, tmp_path, "kept") == 0
    assert record("optima", optima_run(tmp_path / "whole"), tmp_path, "whole") == 0
    kept, whole = load_result(tmp_path / "results" / "kept.json"), load_result(tmp_path / "results" / "whole.json")
    assert kept["rows"] == whole["rows"] and kept["seeds"] == SEEDS
    assert kept["notes"].startswith(whole["notes"]) and "separate sessions" in kept["notes"]
    assert whole["test_scorings"] == 2  # one session: the most-scored configuration, seed 1's chosen iteration
    assert kept["test_scorings"] == 1 + 2 + 1  # three sessions: each scored its baselines on test again
    kept_seed = json.loads((into / "seed-0" / "kept.json").read_text())
    assert {"commit", "machine", "date"} <= set(kept_seed)


def test_keeping_refuses_an_unfinished_seed_and_a_seed_run_with_other_settings(tmp_path, capsys):
    into = tmp_path / "kept"
    run = single_seed_run(tmp_path / "a", 0)
    assert keep_seeds.main(["optima", str(run), "--seed", "1", "--into", str(into)]) == 2
    assert f"{run / 'seed-1' / 'results.json'} does not exist" in capsys.readouterr().err
    assert keep_seeds.main(["optima", str(run), "--seed", "0", "--into", str(into)]) == 0
    other = single_seed_run(tmp_path / "b", 1, iterations=3, train_tasks=32)
    assert keep_seeds.main(["optima", str(other), "--seed", "1", "--into", str(into)]) == 2
    assert "(iterations, train_tasks)" in capsys.readouterr().err
    assert keep_seeds.kept_seeds(into, "optima") == [0]  # the refused seed left nothing behind


# --- designers ---------------------------------------------------------------------------------------------------

BASELINES = {"chain": REFERENCE, "single": {0, 1, 2, 3}}
LONE = {0, 1, 2, 3, 4}  # a designer given alone: 3/0 discordant pairs against the chain, p = 0.250


def eval_run(out: Path, name: str, right: set[int], tokens: float, scorings: int = 1) -> None:
    """A run folder of `design eval`: its samples and the summary fields read from it."""
    (out / name).mkdir(parents=True)
    samples = lines(right)
    (out / name / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    summary = {
        "metrics": {"accuracy": proportion(len(right), TASKS)},
        "tokens_per_task": {"total_tokens": mean_interval([tokens - 1, tokens + 1])},
        "config": {"benchmark": "infoqa", "split": "test", "limit": TASKS},
        "test_scorings": scorings,
    }
    save(out / name / "summary.json", summary)


def design_run(out: Path, groups: bool = True, seeds: list[int] = SEEDS, lone: bool = True) -> Path:
    """A finished `design eval --designers gd agp --baselines chain,single` folder (gd: a seeds folder of `seeds`;
    agp, a lone designer, unless `lone` is False)."""
    config = design_eval.DesignEvalConfig(benchmark="infoqa", out=str(out), baselines="chain,single")
    for name, right in BASELINES.items():
        eval_run(out, name, right, 800.0 if name == "chain" else 200.0)
    members = [design_eval.DesignerRun(f"gd-seed-{s}", out, "gd", s) for s in seeds] if groups else []
    for run in members:
        eval_run(out, run.name, RIGHT[run.seed], 500.0 + 10 * run.seed, scorings=3 if run.seed == 2 else 1)
    alone = [design_eval.DesignerRun("agp", out)] if lone else []
    if lone:
        eval_run(out, "agp", LONE, 600.0)
    paired = design_eval._paired(config, out, list(BASELINES), [*alone, *members])
    if groups:
        design_eval._seed_summary(config, out, "gd", members, list(BASELINES), paired)
    return out


def test_design_records_baselines_lone_designers_and_seed_groups_paired_with_every_baseline(tmp_path):
    run = design_run(tmp_path / "test")
    assert record("design", run, tmp_path, "agp-infoqa") == 0
    path = tmp_path / "results" / "agp-infoqa.json"
    table = rendered(path)
    assert list(table) == ["chain", "single", "agp", "gd (designer)"]
    low, high = proportion(2, TASKS)["ci95"]
    assert table["chain"]["accuracy"] == f"0.200 [{low:.3f}, {high:.3f}]"  # the run's Wilson interval
    assert table["chain"]["tokens"] == "800.0" and table["chain"]["minus:chain"] == "-"
    group = table["gd (designer)"]
    tested = [accuracy(RIGHT[seed]) for seed in SEEDS]
    assert group["accuracy"] == interval(tested)
    assert group["tokens"] == interval([500.0, 510.0, 520.0], ".1f")
    for baseline, right in BASELINES.items():
        assert group[f"minus:{baseline}"] == interval([t - accuracy(right) for t in tested], "+.3f")
    assert group["p"] == P_AGAINST_REFERENCE and group["over"] == "3 seeds (Student t)"
    assert table["agp"]["p"] == "0.250" and table["agp"]["minus:chain"].startswith("+0.300 [")
    result = load_result(path)
    assert result["seeds"] == SEEDS and result["test_scorings"] == 3
    assert result["config"]["baselines"] == ["chain", "single"]
    assert result["config"]["groups"]["gd"]["runs"] == {str(s): f"gd-seed-{s}" for s in SEEDS}


def test_design_refuses_a_run_without_seed_groups_or_pairs(tmp_path):
    lone = design_run(tmp_path / "lone", groups=False)
    with pytest.raises(record_results.RunError, match=r"seeds-NAME\.json does not exist"):
        record_results.design_table(lone)
    run = design_run(tmp_path / "test")
    (run / "paired.json").unlink()
    with pytest.raises(record_results.RunError, match=re.escape(f"{run / 'paired.json'} does not exist")):
        record_results.design_table(run)


# --- latent channels ---------------------------------------------------------------------------------------------

MODES = ("none", "text", "kv-select@30")
RIGHT_BY_MODE = {"none": {0: set(), 1: set(), 2: set()}, "text": dict.fromkeys(SEEDS, REFERENCE), "kv-select@30": RIGHT}


def latent_report(seed: int) -> dict:
    """One seed's summary.json from `latent.mode_rows` over three timed rounds."""
    rounds = [Round(i, MODES, {"none": 1.0 + i, "text": 2.0 + seed, "kv-select@30": 1.5 + seed + i}) for i in range(3)]
    figures = {}
    for mode in MODES:
        right = RIGHT_BY_MODE[mode][seed]
        correct = [i in right for i in range(TASKS)]
        figures[mode] = {"correct": correct, "accuracy": accuracy(right), "ci95": [0.0, 1.0], "tasks": TASKS}
    rows = study_report.mode_rows(Timings(MODES, rounds), figures, [f"t{i}" for i in range(TASKS)])
    return {"modes": rows, "tasks": TASKS, "repeats": len(rounds), "warmup": 1, "reference": "text"}


def latent_run(out: Path) -> Path:
    """A finished `bench latent --seeds 0 1 2` folder: each seed's summary.json, then seeds.json."""
    reports = {seed: latent_report(seed) for seed in SEEDS}
    for seed, report in reports.items():
        save(out / f"seed-{seed}" / "summary.json", report)
    config = asdict(latent.LatentStudyConfig(seeds=SEEDS, out=str(out)))
    write_seed_summary(out, {seed: study_report.seed_figures(r) for seed, r in reports.items()}, config=config)
    return out


def test_latent_records_each_mode_across_seeds_with_p_against_text_in_seed_order(tmp_path):
    assert record("latent", latent_run(tmp_path / "latent"), tmp_path) == 0
    table = rendered(tmp_path / "results" / "figure.json")
    assert list(table) == list(MODES)
    kv = table["kv-select@30"]
    assert kv["accuracy"] == interval([accuracy(RIGHT[seed]) for seed in SEEDS])
    assert kv["minus_text"] == interval([accuracy(RIGHT[seed]) - 0.2 for seed in SEEDS], "+.3f")
    assert kv["p"] == P_AGAINST_REFERENCE
    assert table["none"]["p"] == "0.500, 0.500, 0.500"  # text alone right on two tasks: 2/2**2
    # median of the rounds' seconds over the tasks, and the time against text's within each round
    assert kv["seconds"] == interval([(2.5 + seed) / TASKS for seed in SEEDS])
    assert kv["vs_text"] == interval([(2.5 + seed) / (2.0 + seed) for seed in SEEDS], ".2f")
    assert table["text"]["minus_text"] == table["text"]["p"] == "-" and table["text"]["vs_text"].startswith("1.00")
    assert load_result(tmp_path / "results" / "figure.json")["test_scorings"] is None


def test_latent_records_a_real_seeded_bench_run(tiny, tmp_path):
    out = tmp_path / "latent"
    bench = ["bench", "latent", "--seeds", "0", "1", "--model", "tiny-random", "--limit", "3", "--repeats", "1"]
    assert kvmesh_main([*bench, "--only", "text", "none", "--warmup", "0", "--out", str(out)]) == 0
    assert record("latent", out, tmp_path) == 0
    table = rendered(tmp_path / "results" / "figure.json")
    reports = [json.loads((out / f"seed-{seed}" / "summary.json").read_text()) for seed in (0, 1)]
    modes = [{mode["name"]: mode for mode in report["modes"]} for report in reports]
    assert set(table) == {"none", "text"}
    for name, row in table.items():
        assert row["accuracy"] == interval([m[name]["accuracy"] for m in modes])
        assert row["seconds"] == interval([m[name]["seconds_per_task"] for m in modes])
    assert table["none"]["p"] == ", ".join(f"{m['none']['paired_vs_text']['mcnemar_p']:.3f}" for m in modes)


def test_latent_refuses_an_unseeded_run_and_another_kind_of_run(tmp_path, capsys):
    single = tmp_path / "single"
    save(single / "summary.json", latent_report(0))  # `bench latent --out` without --seeds
    assert record("latent", single, tmp_path) == 2
    error = capsys.readouterr().err
    assert f"{single / 'seeds.json'} does not exist" in error and "bench latent --seeds" in error
    optima = optima_run(tmp_path / "optima")
    with pytest.raises(record_results.RunError, match="not a latent bench run"):
        record_results.latent_table(optima)
    with pytest.raises(record_results.RunError, match="not an Optima run"):
        record_results.optima_table(latent_run(tmp_path / "latent"))


# --- timings -----------------------------------------------------------------------------------------------------


def test_timing_records_every_timed_figure_of_a_real_benchmark_run(tiny, tmp_path):
    script = SCRIPT.parent / "batching.py"
    argv = ["--model", "tiny-random", "--tasks", "2", "--max-new-tokens", "2", "--repeats", "2", "--json"]
    output = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, check=True)
    measured = tmp_path / "batching.json"
    measured.write_text(output.stdout)
    data = json.loads(output.stdout)
    assert record("timing", measured, tmp_path) == 0
    table = rendered(tmp_path / "results" / "figure.json")
    assert set(table) == {"sequential_s", "batched_s", "ratio"}  # every timed figure, nothing else
    for name, row in table.items():
        assert [row["median"], row["min"], row["max"]] == [f"{data[name][k]:.3f}" for k in ("median", "min", "max")]
        assert row["rounds"] == "2"
    saved = load_result(tmp_path / "results" / "figure.json")
    assert saved["config"]["tasks"] == 2 and saved["config"]["identical_transcripts"] == "2/2"
    assert saved["config"]["torch_threads"] == data["torch_threads"] >= 1  # times depend on it: kept beside them
    assert saved["seeds"] is None


def test_timing_reads_nested_and_per_agent_figures_and_refuses_a_file_without_one(tmp_path, capsys):
    kv_reuse = {  # `kvmesh bench kv-reuse --json`'s shape: spreads per agent in a list, rounds counted beside them
        "config": {"agents": 2},
        "ttft": [
            {
                "dense": {"median": 0.2, "min": 0.1, "max": 0.3},
                "speedup": {"median": 2, "min": 1, "max": 3},
                "rounds": 4,
            }
        ],
        "onednn": {"decode_ms": {"dense": {"median": 5.0, "min": 4.0, "max": 6.0, "rounds": [4.0, 5.0, 6.0]}}},
        "reuse_rate": 0.5,
    }
    measured = tmp_path / "kv.json"
    measured.write_text(json.dumps(kv_reuse))
    assert record("timing", measured, tmp_path) == 0
    saved = load_result(tmp_path / "results" / "figure.json")
    rows = {row["figure"]: row for row in saved["rows"]}
    assert set(rows) == {"ttft / 1 / dense", "ttft / 1 / speedup", "onednn / decode_ms / dense"}
    assert rows["ttft / 1 / speedup"]["rounds"] == 4 and rows["onednn / decode_ms / dense"]["rounds"] == 3
    assert saved["config"] == {"config / agents": 2, "reuse_rate": 0.5}
    untimed = tmp_path / "untimed.json"
    untimed.write_text(json.dumps({"accuracy": 0.5}))
    assert record("timing", untimed, tmp_path) == 2
    assert "holds no timed figure" in capsys.readouterr().err


def test_latent_seeds_kept_on_another_kind_of_machine_are_refused(tmp_path, capsys):
    """Timings from two machines would be averaged into one interval: keeping refuses the second machine's seed."""
    into = tmp_path / "kept"
    for seed in (0, 1):
        run = tmp_path / f"session-{seed}"
        save(run / f"seed-{seed}" / "summary.json", latent_report(seed))
        config = asdict(latent.LatentStudyConfig(seeds=[seed], out=str(run)))
        write_seed_summary(run, {seed: study_report.seed_figures(latent_report(seed))}, config=config)
        if seed == 1:  # the first seed was kept on a machine with other cores
            kept = json.loads((into / "seed-0" / "kept.json").read_text())
            kept["machine"]["cores"] = (kept["machine"]["cores"] or 0) + 64
            save(into / "seed-0" / "kept.json", kept)
            assert keep_seeds.main(["latent", str(run), "--seed", "1", "--into", str(into)]) == 2
            assert "was kept on another machine (cores differ" in capsys.readouterr().err
        else:
            assert keep_seeds.main(["latent", str(run), "--seed", "0", "--into", str(into)]) == 0
    assert keep_seeds.kept_seeds(into, "latent") == [0]


def test_designer_seeds_kept_one_session_at_a_time_record_the_same_table_as_one_design_eval(tmp_path, capsys):
    into = tmp_path / "kept"
    for seed in (1, 2, 0):
        run = design_run(tmp_path / f"session-{seed}", seeds=[seed], lone=False)
        assert keep_seeds.main(["design", str(run), "--seed", str(seed), "--into", str(into)]) == 0
        shutil.rmtree(run)
    assert keep_seeds.kept_seeds(into, "design") == SEEDS
    assert record("design", into, tmp_path, "kept") == 0
    assert record("design", design_run(tmp_path / "whole", lone=False), tmp_path, "whole") == 0
    kept, whole = load_result(tmp_path / "results" / "kept.json"), load_result(tmp_path / "results" / "whole.json")
    assert kept["rows"] == whole["rows"] and kept["seeds"] == whole["seeds"] == SEEDS
    other = tmp_path / "other"
    design_run(other, seeds=[0], lone=False)
    paired = json.loads((other / "seeds-gd.json").read_text())
    save(other / "seeds-gd.json", paired | {"baselines": ["chain"]})  # scored against other baselines
    assert keep_seeds.main(["design", str(other), "--seed", "0", "--into", str(into)]) == 2
    assert "baselines" in capsys.readouterr().err
