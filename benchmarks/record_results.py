"""Record a finished kvmesh run or benchmark as a `results/` file, from which `make figures` builds the README's tables.

    python benchmarks/record_results.py optima runs/optima --name optima-infoqa --title "Optima, 3 seeds" \\
        --command "kvmesh optima train --seeds 0 1 2 --test --out runs/optima"
    python benchmarks/record_results.py design runs/design/test --name agp-infoqa --title "AGP against fixed \\
        topologies" --command "kvmesh design eval infoqa --designers runs/agp --baselines complete,single ..."
    python benchmarks/record_results.py latent runs/latent --name latent-infoqa --title "Latent channels" \\
        --command "kvmesh bench latent --seeds 0 1 2 --out runs/latent"

Each subcommand reads only what its producer wrote and turns it into a small table (`kvmesh.evals.results`):

    optima   OUT/seeds.json (`optima_train` with seeds) and each seed's OUT/seed-N/results.json: iteration 0, the
             prompt-only compact team and the iteration chosen on validation; validation and test accuracy, test
             tokens, the chosen iteration's paired test differences from both baselines, McNemar p per seed.
    design   OUT/paired.json and OUT/seeds-NAME.json (`kvmesh design eval` with a seeds folder of designers) and
             each run's summary.json: a row per baseline and per designer seeds group (and per lone designer).
    latent   OUT/seeds.json (`kvmesh bench latent --seeds`) and each seed's OUT/seed-N/summary.json: a row per mode.
    timing   a file holding a benchmark's --json output (`benchmarks/*.py --json > F`): a row per timed figure.

Means and intervals across seeds are the ones the producer wrote (Student t over the seeds); p-values are listed
per seed, in the order of the run's seeds. A folder that is not a finished seeded run of the kind asked for is
refused, naming the file and what it lacks.

Caveats: `--command` is recorded as given, so give the exact command that made the run. A file records the
largest test-scoring count among the runs it covers (`kvmesh.evals.ledger`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmesh.cli.design_eval import PAIRED_FILE
from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.evals.results import FiguresError, record_result
from kvmesh.evals.seeds import SEEDS_FILE, seed_folder
from kvmesh.evals.studies.latent import SUMMARY as LATENT_SUMMARY
from kvmesh.evals.studies.latent_report import REFERENCE
from kvmesh.training.optima.loop import BASELINES

ACROSS = "mean [95% across seeds]"


class RunError(ValueError):
    """A folder that is not a finished seeded run of the kind asked for; the message names the file."""


@dataclass
class RecordConfig:
    """Record one finished, seeded run as results/NAME.json.

    Args:
        run: the run's output folder (its --out); for `timing`, the file its --json output was saved to.
        name: the results file's stem, also the README block's name (letters, digits, '-' and '_').
        title: what the figure shows, in a few words.
        command: the command that produced the run, recorded as given.
        results: the folder of result files.
        notes: anything a reader needs to read the figure right (added after what this script notes itself).
    """

    run: str
    name: str
    title: str
    command: str
    results: str = "results"
    notes: str = ""


@dataclass
class Table:
    """What one run gives `record_result`: the table, its seeds, configuration, test scorings and own notes."""

    columns: list[dict]
    rows: list[dict]
    seeds: list[int] | None
    config: dict
    test_scorings: int | None
    notes: str = ""


@dataclass(frozen=True)
class RunFolder:
    """A run folder of one kind; `read` refuses a missing or malformed file, naming it and the kind expected."""

    path: Path
    kind: str  # "a finished `...` run": what the folder should be

    def refuse(self, where: Path, problem: str) -> RunError:
        return RunError(f"{where} {problem}: {self.path} is not {self.kind}")

    def read(self, relative: str | Path, *keys: str) -> dict:
        path = self.path / relative
        if not path.is_file():
            raise self.refuse(path, "does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise self.refuse(path, f"is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise self.refuse(path, "holds no JSON object")
        missing = [key for key in keys if key not in data]
        if missing:
            raise self.refuse(path, f"lacks {', '.join(missing)}")
        return data

    def seeds_summary(self, filename: str = SEEDS_FILE, *keys: str) -> tuple[dict, list[int]]:
        """A `kvmesh.evals.seeds` summary and its seeds, refused without the fields it always has (and `keys`)."""
        summary = self.read(filename, "seeds", "across_seeds", "per_seed", *keys)
        seeds = summary["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise self.refuse(self.path / filename, f"lists no seeds ({seeds!r})")
        return summary, seeds


def across(summary: dict, figure: str, where: Path) -> dict:
    """A figure across seeds as a table cell: {"value": mean, "ci95": [lo, hi]}."""
    entry = summary["across_seeds"].get(figure)
    if entry is None:
        raise RunError(
            f"{where} has no figure {figure!r} across seeds (it keeps only the figures every seed has); "
            "finish every seed's run, or pass the folder of the right kind of run"
        )
    return {"value": entry["mean"], "ci95": list(entry["ci95"])}


def format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_values(values: Sequence[float]) -> str:
    """ "0.031, 0.210, 0.500": one exact McNemar p per seed, in the run's seed order."""
    return ", ".join(format_p(p) for p in values)


def max_scorings(counts: Sequence[int | None]) -> int | None:
    """How often the most-scored configuration of the table was scored on test (None: none recorded a count)."""
    known = [count for count in counts if count is not None]
    return max(known) if known else None


def column(key: str, header: str, format: str = "") -> dict:
    return {"key": key, "header": header, "format": format}


# --- Optima ------------------------------------------------------------------------------------------------------

OPTIMA = "a finished `kvmesh optima train --seeds ... --test` run"
RESULTS = "results.json"  # each seed's, in OUT/seed-N


def optima_table(run: str | Path) -> Table:
    """Iteration 0, the compact team and the chosen iteration of a seeded Optima run scored on test."""
    folder = RunFolder(Path(run), OPTIMA)
    summary, seeds = folder.seeds_summary(SEEDS_FILE, "config")
    where, config = folder.path / SEEDS_FILE, summary["config"]
    if "iterations" not in config:
        raise folder.refuse(where, "is not an Optima run's (its config has no iterations)")
    if not config.get("test"):
        raise folder.refuse(where, "records a run without --test: rerun the same command with --test to score it")
    results = {seed: folder.read(seed_folder("", seed) / RESULTS, "points", "chosen") for seed in seeds}
    chosen = [results[seed]["chosen"] for seed in seeds]
    p_by_baseline: dict[str, list[float]] = {baseline: [] for baseline in BASELINES}
    for seed, label in zip(seeds, chosen, strict=True):
        paired = results[seed].get("test", {}).get("paired", {})
        for baseline in BASELINES:
            name = f"{label} vs {baseline}"
            if name not in paired:
                where_seed = seed_folder(folder.path, seed) / RESULTS
                raise folder.refuse(where_seed, f"has no paired test comparison {name!r} (no --test?)")
            p_by_baseline[baseline].append(paired[name]["mcnemar_p"])

    def point(label: str, figure: str) -> dict:
        row = {"point": label, "validation": across(summary, f"validation/{figure}/accuracy", where)}
        for key in ("accuracy", "generated_tokens", "total_tokens"):
            row[key] = across(summary, f"test/{figure}/{key}", where)
        return row

    each = ", ".join(label.removeprefix("iteration ") for label in chosen)
    rows = [point(baseline, baseline) for baseline in BASELINES]
    best = point(f"chosen iteration (k per seed: {each})", "chosen")
    for key, baseline in zip(("vs_iteration_0", "vs_compact"), BASELINES, strict=True):
        best[key] = across(summary, f"test/chosen vs {baseline}/accuracy_difference", where)
        best[f"p_{key}"] = p_values(p_by_baseline[baseline])
    rows.append(best)
    tested = [p.get("test_scorings") for r in results.values() for p in r["test"].get("points", [])]
    scorings = max_scorings(tested)
    if summary.get("kept"):  # seeds run in separate sessions: each scored its baselines on test again
        per_seed = [
            max_scorings([p.get("test_scorings") for p in r["test"].get("points", [])]) for r in results.values()
        ]
        scorings = sum(count for count in per_seed if count is not None) or scorings
    columns = [
        column("point", "team"),
        column("validation", f"validation accuracy, {ACROSS}", ".3f"),
        column("accuracy", f"test accuracy, {ACROSS}", ".3f"),
        column("generated_tokens", "generated tokens/task (test)", ".1f"),
        column("total_tokens", "prompt+completion tokens/task (test)", ".1f"),
        column("vs_iteration_0", "test accuracy - iteration 0", "+.3f"),
        column("vs_compact", "test accuracy - compact", "+.3f"),
        column("p_vs_iteration_0", "McNemar p vs iteration 0 (per seed)"),
        column("p_vs_compact", "McNemar p vs compact (per seed)"),
    ]
    notes = (
        f"{len(seeds)} seeds; the iteration is chosen on {config.get('val_tasks')} validation tasks, then scored "
        f"once on {config.get('eval_tasks')} test tasks with both baselines. Intervals: Student t across seeds. "
        "Differences: the chosen iteration minus the baseline on the same test tasks (paired); McNemar p exact, "
        "one per seed in seed order. The baselines are untrained and greedy: one run, the same for every seed."
    )
    if summary.get("kept"):
        commits = sorted({kept.get("commit") or "?" for kept in summary["kept"].values()})
        notes += (
            f" Seeds run in separate sessions (kept with benchmarks/keep_seeds.py at commits {', '.join(commits)}); "
            "the test-scoring count adds up every session's."
        )
    return Table(columns, rows, seeds, config, scorings, notes)


# --- designers ---------------------------------------------------------------------------------------------------

DESIGN = "a finished `kvmesh design eval --designers SEEDS_FOLDER --baselines ...` run"


def design_table(run: str | Path) -> Table:
    """Each baseline's test accuracy, each designer seeds group's across seeds, paired with every baseline."""
    folder = RunFolder(Path(run), DESIGN)
    paired = folder.read(PAIRED_FILE, "paired")["paired"]
    files = sorted(folder.path.glob("seeds-*.json"))
    if not files:
        raise folder.refuse(folder.path / "seeds-NAME.json", "does not exist (no designer seeds group was scored)")
    groups = {p.stem.removeprefix("seeds-"): folder.seeds_summary(p.name, "baselines", "runs") for p in files}
    baselines = next(iter(groups.values()))[0]["baselines"]
    grouped = {name for summary, _ in groups.values() for name in summary["runs"].values()}
    lone = [name for name in paired if name not in grouped]  # designers given as single folders
    summaries = {
        name: folder.read(Path(name) / "summary.json", "metrics", "tokens_per_task", "config")
        for name in [*baselines, *lone, *sorted(grouped)]
    }

    def run_row(name: str, over: str) -> dict:
        summary = summaries[name]
        accuracy = summary["metrics"]["accuracy"]
        return {
            "run": name,
            "over": over,
            "accuracy": {"value": accuracy["value"], "ci95": list(accuracy["ci95"])},
            "tokens": summary["tokens_per_task"]["total_tokens"]["value"],
        }

    rows = [run_row(name, "test tasks (Wilson)") for name in baselines]
    for name in lone:
        row = run_row(name, "test tasks (Wilson; differences: paired bootstrap)")
        for baseline in baselines:
            difference = paired[name][baseline]["accuracy_difference"]
            row[f"minus:{baseline}"] = {"value": difference["value"], "ci95": list(difference["ci95"])}
        if baselines:
            row["p"] = p_values([paired[name][baselines[0]]["mcnemar_p"]])
        rows.append(row)
    all_seeds: list[int] = []
    for group, (summary, seeds) in groups.items():
        where = folder.path / f"seeds-{group}.json"
        row = {
            "run": f"{group} (designer)",
            "over": f"{len(seeds)} seeds (Student t)",
            "accuracy": across(summary, "test/accuracy", where),
            "tokens": across(summary, "test/total_tokens", where),
        }
        for baseline in baselines:
            row[f"minus:{baseline}"] = across(summary, f"test/accuracy_difference/{baseline}", where)
        if baselines:
            runs = [summary["runs"].get(str(seed)) for seed in seeds]
            if any(name not in paired for name in runs):
                raise folder.refuse(folder.path / PAIRED_FILE, f"lacks a run of group {group} ({runs})")
            row["p"] = p_values([paired[name][baselines[0]]["mcnemar_p"] for name in runs])
        rows.append(row)
        all_seeds += [seed for seed in seeds if seed not in all_seeds]
    columns = [
        column("run", "run"),
        column("over", "interval over"),
        column("accuracy", "test accuracy [95% interval]", ".3f"),
        column("tokens", "total tokens/task", ".1f"),
        *(column(f"minus:{b}", f"accuracy - {b}", "+.3f") for b in baselines),
    ]
    if baselines:
        columns.append(column("p", f"McNemar p vs {baselines[0]} (per seed)"))
    first = next(iter(groups.values()))[0]
    config = {
        "benchmark": first.get("benchmark"),
        "split": first.get("split"),
        "baselines": baselines,
        "groups": {group: {"runs": s["runs"], "designers": s.get("designers")} for group, (s, _) in groups.items()},
        "runs": {name: summary["config"] for name, summary in summaries.items()},
    }
    notes = (
        "Test split; every run scores the same task ids. Baseline accuracies: Wilson interval over the tasks. "
        "Designer groups: mean with a Student t interval across training seeds; differences are designer minus "
        "baseline on the same tasks; McNemar p exact, one per seed in seed order."
    )
    scorings = max_scorings([summary.get("test_scorings") for summary in summaries.values()])
    return Table(columns, rows, all_seeds, config, scorings, notes)


# --- latent channels ---------------------------------------------------------------------------------------------

LATENT = "a finished `kvmesh bench latent --seeds ... --out OUT` run"


def latent_table(run: str | Path) -> Table:
    """Each mode of a seeded `bench latent` run: accuracy and time across seeds, paired with the text relay."""
    folder = RunFolder(Path(run), LATENT)
    summary, seeds = folder.seeds_summary(SEEDS_FILE, "config")
    where, config = folder.path / SEEDS_FILE, summary["config"]
    if "fractions" not in config:
        raise folder.refuse(where, "is not a latent bench run's (its config has no fractions)")
    reports = {seed: folder.read(seed_folder("", seed) / LATENT_SUMMARY, "modes", "tasks", "repeats") for seed in seeds}
    by_seed = {seed: {mode["name"]: mode for mode in report["modes"]} for seed, report in reports.items()}
    rows = []
    for name in by_seed[seeds[0]]:
        modes = [by_seed[seed].get(name) for seed in seeds]
        if None in modes:
            lacking = seeds[modes.index(None)]
            raise folder.refuse(seed_folder(folder.path, lacking) / LATENT_SUMMARY, f"has no mode {name!r}")
        row = {
            "mode": name,
            "accuracy": across(summary, f"{name}/accuracy", where),
            "seconds": across(summary, f"{name}/seconds_per_task", where),
        }
        if name != REFERENCE and all("paired_vs_text" in mode for mode in modes):
            row["minus_text"] = across(summary, f"{name}/accuracy_minus_text", where)
            row["p"] = p_values([mode["paired_vs_text"]["mcnemar_p"] for mode in modes])
        if all("vs_text" in mode for mode in modes):
            row["vs_text"] = across(summary, f"{name}/vs_text", where)
        rows.append(row)
    columns = [
        column("mode", "mode"),
        column("accuracy", f"accuracy, {ACROSS}", ".3f"),
        column("minus_text", f"accuracy - {REFERENCE}", "+.3f"),
        column("p", f"McNemar p vs {REFERENCE} (per seed)"),
        column("seconds", f"s/task (median of rounds), {ACROSS}", ".3f"),
        column("vs_text", f"time / {REFERENCE}", ".2f"),
    ]
    first = reports[seeds[0]]
    notes = (
        f"{first['tasks']} tasks and {first['repeats']} timed rounds per seed; the seed picks kv-select's "
        "calibration tasks. Intervals: Student t across seeds. Differences: the mode minus the text relay on the "
        "same tasks; McNemar p exact, one per seed in seed order. Times: the median over rounds, the ratio to "
        "text taken within each round."
    )
    scorings = max_scorings([report.get("test_scorings") for report in reports.values()])
    return Table(columns, rows, seeds, config, scorings, notes)


# --- timings -----------------------------------------------------------------------------------------------------

TIMING = "the --json output of a benchmark script or `kvmesh bench kv-reuse --json`"
SPREAD_KEYS = ("median", "min", "max")  # a timed figure, as `kvmesh.evals.timing.Spread` and its callers write it


def spreads(data: dict | list, prefix: str = "", rounds: int | None = None) -> tuple[list[dict], dict]:
    """Every timed figure in a benchmark's JSON (a {median, min, max} object at any depth, in lists too), as a
    row named by its path with its count of rounds (its own `rounds` list, else the nearest enclosing `rounds`
    count), and every other top-level scalar or scalar of a nested object as configuration."""
    rows, config = [], {}
    if isinstance(data, dict) and isinstance(data.get("rounds"), int):
        rounds = data["rounds"]
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        name = f"{prefix}{key if isinstance(key, str) else key + 1}"
        if isinstance(value, dict) and all(k in value for k in SPREAD_KEYS):
            counted = len(value["rounds"]) if isinstance(value.get("rounds"), list) else rounds
            rows.append({"figure": name, **{k: value[k] for k in SPREAD_KEYS}, "rounds": counted})
        elif isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
            more_rows, more_config = spreads(value, f"{name} / ", rounds)
            rows, config = rows + more_rows, config | more_config
        elif not isinstance(value, list) and key != "rounds":
            config[name] = value
    return rows, config


def timing_table(path: str | Path) -> Table:
    """The timed figures of one benchmark's --json output (a file), medians with the min and max over rounds."""
    folder = RunFolder(Path(path).parent, TIMING)
    data = folder.read(Path(path).name)
    rows, config = spreads(data)
    if not rows:
        raise folder.refuse(Path(path), "holds no timed figure (no {median, min, max} object)")
    columns = [column("figure", "figure"), column("median", "median", ".3f"), column("min", "min", ".3f")]
    columns += [column("max", "max", ".3f"), column("rounds", "rounds")]
    notes = (
        "Each figure: the median over the timed rounds with their min and max (seconds unless the name says "
        "otherwise; a ratio is taken within each round), after a warm-up, the modes interleaved in an order "
        "rotated each round (kvmesh.evals.timing)."
    )
    return Table(columns, rows, None, config, None, notes)


# --- the command -------------------------------------------------------------------------------------------------

KINDS: dict[str, tuple[Callable[[str | Path], Table], str]] = {
    "optima": (optima_table, "an Optima run: kvmesh optima train --seeds ... --test"),
    "design": (design_table, "designers against baselines: kvmesh design eval --designers SEEDS_FOLDER"),
    "latent": (latent_table, "latent channels: kvmesh bench latent --seeds ..."),
    "timing": (timing_table, "a benchmark's timings: the file its --json output was saved to"),
}


def record(kind: str, config: RecordConfig) -> Path:
    """Build the table of `config.run` (a run of `kind`) and write it to `config.results`/`config.name`.json."""
    make = KINDS[kind][0]
    table = make(config.run)
    notes = " ".join(part for part in (table.notes, config.notes.strip()) if part)
    return record_result(
        config.name,
        title=config.title,
        command=config.command,
        columns=table.columns,
        rows=table.rows,
        seeds=table.seeds,
        config=table.config,
        notes=notes,
        test_scorings=table.test_scorings,
        folder=config.results,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind, (_, help_text) in KINDS.items():
        add_config_arguments(kinds.add_parser(kind, help=help_text), RecordConfig, positional={"run": None})
    args = parser.parse_args(argv)
    try:
        path = record(args.kind, config_from_args(RecordConfig, args))
    except (RunError, FiguresError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
