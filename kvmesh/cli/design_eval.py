"""`kvmesh design eval`: trained designers against fixed topologies on the benchmark's test split, paired.

kvmesh design eval infoqa --designers runs/design/agp-seeds --baselines complete,single --limit 200 \\
    --out runs/design/test

This is the deliberate test step: every run scores the benchmark's test split (for an InfoQA file too: its
test split, never its train or validation lines), leaving out every id any compared designer trained or
validated on, so all runs, baselines included, score the same tasks. Each run's summary counts how many times
that configuration was scored on test (`test_scorings`, `kvmesh.evals.ledger`): choose designers on validation
(`design train` does) and come here once.

A `design train --seeds` folder given to `--designers` stands for every seed's designer (runs `NAME-seed-N`).
OUT holds one run per designer and baseline, `paired.json` (each designer run against each baseline on the
shared task ids: accuracy difference with McNemar p, paired bootstrap intervals; differences are designer minus
baseline), `seeds-NAME.json` for each seeds group (test accuracy, tokens per task and the paired accuracy
differences across seeds, `kvmesh.evals.seeds`), and the trade-off plot.

Caveat: a file's test split is a hash of each id and the seed, so `--seed` must be the `--data-seed` the
designers trained with; a designer trained with another is refused rather than scored on a shrunken test split.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kvmesh.cli.flags import config_from_args
from kvmesh.cli.specs import designer_folder, seed_designer_folders
from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks import BENCHMARKS, SINGLE, InfoQA, benchmark_class, make_benchmark
from kvmesh.evals.figures import Point, plot_tradeoff
from kvmesh.evals.paired import paired_comparison
from kvmesh.evals.report import compare_report
from kvmesh.evals.runner import EvalConfig, run_eval
from kvmesh.evals.seeds import seeds_table, write_seed_summary
from kvmesh.evals.store import read_samples
from kvmesh.evals.summary import load_summary
from kvmesh.graph.presets import PRESETS
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, channel_name, check_channel
from kvmesh.runs import CONFIG, write_json
from kvmesh.topology import load_designer
from kvmesh.topology.designer import DESIGNER_FILE

PAIRED_FILE = "paired.json"


@dataclass
class DesignEvalConfig:
    """What `kvmesh design eval` compares on the test split.

    Args:
        benchmark: infoqa, infoqa-projects, gsm8k or humaneval.
        designers: trained designers: training folders, designer folders, or a `design train --seeds` folder
            (every seed's designer, run as NAME-seed-N).
        baselines: comma-separated fixed teams, each a topology (single, chain, star, complete, random) on
            --channel, or TOPOLOGY:CHANNEL on another channel or variant (complete:kv-select@100); `grid` adds
            single and {chain, star, complete} x {text, kv-select@100, kv-select@100+t5}. The first is the
            reference of the printed paired comparisons.
        out: folder for one run per designer and baseline, paired.json, seeds-NAME.json and the plot.
        limit: only the first N test tasks (after leaving out seen ones).
        model: model of the baseline teams.
        agents: agents in the baseline teams.
        max_new_tokens: cap per turn in the baseline teams.
        channel: channel of the baseline teams.
        seed: seeds sampling and the data: InfoQA generation, or a file's hash split (pass the --data-seed the
            designers trained with, so that the test split is the one they left out).
        batch_size: tasks per batched pass.
        data_path: an InfoQA JSONL file (its test split) or the GSM8K folder (else KVMESH_GSM8K_PATH).
        allow_code_execution: run generated code (sandboxed).
        resume: continue interrupted runs in --out.
    """

    benchmark: str = field(metadata={"choices": BENCHMARKS})
    out: str
    designers: list[str] | None = None
    baselines: str = ""
    limit: int | None = None
    model: str = "smollm2-135m"
    agents: int = 3
    max_new_tokens: int = 48
    channel: str = field(default=DEFAULT_CHANNEL, metadata={"check": channel_name})
    seed: int = 0
    batch_size: int = 16
    data_path: str | None = None
    allow_code_execution: bool = False
    resume: bool = False


@dataclass(frozen=True)
class DesignerRun:
    """One designer to score: its run's name, its saved folder, and (from a seeds folder) its group and seed."""

    name: str
    folder: Path
    group: str | None = None
    seed: int | None = None


def designer_runs(paths: list[str]) -> list[DesignerRun]:
    """The designers `--designers` names, a seeds folder expanded to every seed's (`NAME-seed-N`)."""
    runs = []
    for path in paths:
        name = Path(path).resolve().name
        try:
            runs.append(DesignerRun(name, designer_folder(path)))
            continue
        except FileNotFoundError:
            seeds = seed_designer_folders(path)
            if not seeds:
                raise
        runs += [DesignerRun(f"{name}-seed-{seed}", folder, name, seed) for seed, folder in seeds.items()]
    return runs


def _data_seed(folder: Path) -> int | None:
    """The data seed a designer's training folder chose its tasks with (None: not saved by `design train`)."""
    path = folder.parent / CONFIG
    run = json.loads(path.read_text()).get("run") if path.is_file() else None
    if not isinstance(run, dict):
        return None
    return run.get("data_seed", run.get("seed"))  # older runs chose their tasks with `seed`


def _check_data_seed(config: DesignEvalConfig, designers: list[DesignerRun]) -> None:
    """Refuse designers whose data seed splits the data otherwise than `--seed` (a file's or HumanEval's hash
    split): their train and validation tasks would be scattered over this test split, which would shrink to what
    they happened to leave. Generators and GSM8K's files split the same way whatever the seed."""
    benchmark = make_benchmark(config.benchmark, config.data_path, config.seed, config.allow_code_execution)
    if benchmark.split_rule("test").by in ("generator", "files"):
        return

    def test_ids(seed: int) -> set[str]:
        benchmark = make_benchmark(config.benchmark, config.data_path, seed, config.allow_code_execution)
        return {sample.id for sample in benchmark.samples("test")}

    ours = None
    for run in designers:
        seed = _data_seed(run.folder)
        if seed is None or seed == config.seed:
            continue
        ours = test_ids(config.seed) if ours is None else ours
        if test_ids(seed) != ours:
            raise ValueError(
                f"{run.name} chose its tasks from {config.data_path} with data seed {seed}, which splits it "
                f"otherwise than --seed {config.seed}: pass --seed {seed}, so that every run scores the test split "
                "that designer left out"
            )


def _seen_test_ids(config: DesignEvalConfig, folders: list[Path]) -> list[str]:
    """Test ids any of the designers trained or validated on: every run leaves them out, so all of them,
    baselines included, are scored on the same tasks (none where the splits are disjoint, as they should be)."""
    seen = set()
    for folder in folders:
        seen |= set(json.loads((folder / DESIGNER_FILE).read_text()).get("seen_ids", []))
    if not seen:
        return []
    benchmark = make_benchmark(config.benchmark, config.data_path, config.seed, config.allow_code_execution)
    return sorted(seen & {sample.id for sample in benchmark.samples("test")})


def design_eval(args: argparse.Namespace) -> int:
    config = config_from_args(DesignEvalConfig, args)
    out = Path(config.out)
    baselines = baseline_names(config.baselines)
    designers = designer_runs(config.designers or [])
    names = [*baselines, *(run.name for run in designers)]
    if not names:
        raise ConfigError("name {baselines}, {designers} or both")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"two runs would be named {', '.join(repeated)} in {out}: give the designers' folders other names"
        )
    _check_data_seed(config, designers)
    shared = {
        "benchmark": config.benchmark,
        "split": "test",  # also for a file, whose own default is every line: this is the held-out step
        "limit": config.limit,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "data_path": config.data_path,
        "allow_code_execution": config.allow_code_execution,
        "exclude_ids": _seen_test_ids(config, [run.folder for run in designers]),
    }
    team = {"model": config.model, "agents": config.agents, "max_new_tokens": config.max_new_tokens}
    runs: list[tuple[str, EvalConfig]] = []
    reads_shards = issubclass(benchmark_class(config.benchmark), InfoQA)
    for baseline in baselines:
        topology, _, channel = baseline.partition(":")
        # one agent alone cannot hold every InfoQA shard as its own: it reads them all (the no-communication ceiling)
        shards = "all" if topology == SINGLE and reads_shards else "own"
        fixed = EvalConfig(**shared, **team, topology=topology, channel=channel or config.channel, shards=shards)
        runs.append((baseline, fixed))
    runs += [(run.name, EvalConfig(**shared, designer=str(run.folder))) for run in designers]
    for name, run in runs:
        print(f"== {name}")
        run_eval(run, out / name, resume=config.resume, load_designer=load_designer)
    print(compare_report([str(out / name) for name in names]))
    paired = _paired(config, out, baselines, designers)
    for group in dict.fromkeys(run.group for run in designers if run.group):
        members = [run for run in designers if run.group == group]
        print(f"\n{group}: {len(members)} seeds, {out / _seeds_file(group)}")
        print(_seed_summary(config, out, group, members, baselines, paired))
    points = [Point.from_run(out / name, name) for name in names]
    plot = plot_tradeoff(points, out / "tradeoff.png", title=f"{config.benchmark} test: accuracy against tokens")
    timed = [replace(p, tokens=p.seconds) for p in points if p.seconds is not None]
    title = f"{config.benchmark} test: accuracy against time"
    clock = plot_tradeoff(
        timed, out / "tradeoff-time.png", title, "seconds of model calls per task (the time cost)", "s"
    )
    write_json(out / "tradeoff.json", [asdict(p) for p in points])
    print(f"\npaired comparisons: {out / PAIRED_FILE}\ntrade-off plots: {plot}, {clock}")
    return 0


GRID_CHANNELS = ("text", "kv-select@100", "kv-select@100+t5")  # text, the latent channel, with latent thoughts
GRID = (SINGLE, *(f"{topology}:{channel}" for topology in ("chain", "star", "complete") for channel in GRID_CHANNELS))


def baseline_names(baselines: str) -> list[str]:
    """The fixed teams `--baselines` names, `grid` expanded (`GRID`), each TOPOLOGY[:CHANNEL] checked."""
    names = []
    for entry in (b.strip() for b in baselines.split(",") if b.strip()):
        names += [name for name in (GRID if entry == "grid" else [entry]) if name not in names]
    for name in names:
        topology, _, channel = name.partition(":")
        if topology not in (SINGLE, *PRESETS):
            topologies = ", ".join((SINGLE, *PRESETS))
            raise ConfigError(f"{{baselines}}: {name!r} names no topology; topologies: {topologies}")
        if channel:
            try:
                check_channel(channel, "{baselines}")
            except ValueError as error:
                raise ConfigError(str(error)) from None
    return names


def _paired(config: DesignEvalConfig, out: Path, baselines: list[str], designers: list[DesignerRun]) -> dict:
    """Each designer run against each baseline on their shared test ids; writes OUT/paired.json."""
    samples = {name: read_samples(out / name) for name in [*baselines, *(run.name for run in designers)]}
    paired = {
        run.name: {
            baseline: paired_comparison(samples[baseline], samples[run.name], names=(baseline, run.name))
            for baseline in baselines
        }
        for run in designers
    }
    record = {"benchmark": config.benchmark, "split": "test", "difference": "designer - baseline"}
    write_json(out / PAIRED_FILE, record | {"paired": paired})
    return paired


def _seeds_file(group: str) -> str:
    return f"seeds-{group}.json"


def _seed_summary(
    config: DesignEvalConfig, out: Path, group: str, members: list[DesignerRun], baselines: list[str], paired: dict
) -> str:
    """Write OUT/seeds-GROUP.json (each seed's test figures across seeds) and return its table."""
    per_seed = {}
    for run in members:
        summary = load_summary(out / run.name)
        figures = {
            "test/accuracy": summary["metrics"]["accuracy"]["value"],
            "test/total_tokens": summary["tokens_per_task"]["total_tokens"]["value"],
        }
        for baseline in baselines:
            figures[f"test/accuracy_difference/{baseline}"] = paired[run.name][baseline]["accuracy_difference"]["value"]
        per_seed[run.seed] = figures
    extra = {
        "benchmark": config.benchmark,
        "split": "test",
        "baselines": baselines,
        "runs": {str(run.seed): run.name for run in members},
        "designers": {str(run.seed): str(run.folder) for run in members},
    }
    summary = write_seed_summary(out, per_seed, _seeds_file(group), **extra)
    return "\n".join(seeds_table(summary))
