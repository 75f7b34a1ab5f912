"""`kvmesh design train|eval|plot`: learn a team's topology on a benchmark, then compare it on held-out tasks.

kvmesh design train infoqa --designer agp --out runs/design/agp             # train + validation splits
kvmesh design eval infoqa --designers runs/design/agp --baselines single,chain,complete --limit 200 \\
    --out runs/design/test                                                   # test split, trade-off plot
kvmesh design plot runs/design/test/* -o tradeoff.png

A training folder holds `config.json`, the saved designer (`designer/`), its checkpoints (`checkpoint.pt`,
or `mining/` for AGP), `history.json`, and the before/after pictures. `--resume` continues a killed run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from kvmesh.agents.task import Task
from kvmesh.cli.flags import add_config_arguments, argparse_help, config_from_args, flag
from kvmesh.cli.specs import designer_folder
from kvmesh.config import ConfigError, field_help
from kvmesh.evals.benchmarks import BENCHMARKS, configured_team, design_splits, make_benchmark
from kvmesh.evals.figures import Point, plot_tradeoff
from kvmesh.evals.report import compare_table
from kvmesh.evals.runner import EvalConfig, run_eval
from kvmesh.graph.pictures import write_design_pictures
from kvmesh.graph.presets import PRESETS, TEMPORAL_MODES
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, available_channels
from kvmesh.topology import DESIGNERS, load_designer
from kvmesh.topology.designer import DESIGNER_FILE, Designer, DesignerConfig
from kvmesh.training.examples import example_task
from kvmesh.training.reinforce import design_run


@dataclass
class DesignTrainConfig:
    """What `kvmesh design train` runs; saved as config.json in the output folder.

    Args:
        benchmark: infoqa, gsm8k or humaneval.
        designer: edge-logits, gdesigner or agp.
        model: alias, local folder or Hugging Face id for every agent.
        topology: the team's graph before design: the designer's anchor and its "before" picture.
        agents: number of agents (the benchmark's roles, cycling).
        rounds: rounds of communication; with more than one, temporal edges are candidates too.
        temporal: edges between rounds: none, self (each agent reads its own last reply) or complete (each reads
            every agent's); default: complete when rounds > 1, else none.
        max_new_tokens: cap on tokens per agent turn.
        train_size: training tasks.
        val_size: validation tasks, disjoint from the training tasks.
        seed: seeds the data, graph sampling and initial weights.
        data_path: GSM8K folder (else KVMESH_GSM8K_PATH).
        allow_code_execution: lets the roles' tools and HumanEval run generated code in the sandbox (not a
            security boundary).
        channel: text or kv-reuse, on every edge the designer chooses.
    """

    benchmark: str = field(default="infoqa", metadata={"choices": BENCHMARKS})
    designer: str = field(default="agp", metadata={"choices": tuple(DESIGNERS)})
    model: str = "smollm2-135m"
    topology: str = field(default="complete", metadata={"choices": PRESETS})
    agents: int = 3
    rounds: int = 1
    temporal: str | None = field(default=None, metadata={"choices": TEMPORAL_MODES})
    max_new_tokens: int = 48
    train_size: int = 128
    val_size: int = 48
    seed: int = 0
    data_path: str | None = None
    allow_code_execution: bool = False
    channel: str = field(default=DEFAULT_CHANNEL, metadata={"choices": available_channels})


@dataclass
class DesignTrainRun:
    """Where `kvmesh design train` writes.

    Args:
        out: output folder (default runs/design/<benchmark>-<designer>).
        resume: continue an interrupted run in --out.
    """

    out: str | None = None
    resume: bool = False


def _add_designer_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of any designer; unset flags keep the chosen designer's defaults."""
    designers = DESIGNERS
    shared = field_help(DesignerConfig)
    seen: set[str] = set()
    for cls in designers.values():
        helps = field_help(cls.config_class)
        for setting in fields(cls.config_class):
            if setting.name in seen or setting.name == "seed":
                continue
            seen.add(setting.name)
            defaults = {
                kind: other.config_class.__dataclass_fields__[setting.name].default
                for kind, other in designers.items()
                if setting.name in other.config_class.__dataclass_fields__
            }
            if len(set(defaults.values())) == 1:
                default = f"default {setting.default}"
            else:
                default = "default " + ", ".join(f"{kind} {value}" for kind, value in defaults.items())
            which = "" if len(defaults) == len(designers) else f"{', '.join(defaults)} only; "
            kind = type(setting.default)
            style = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
            parser.add_argument(
                flag(setting.name),
                default=None,
                help=argparse_help(f"{shared.get(setting.name) or helps.get(setting.name, '')} ({which}{default})"),
                **style,
            )


def designer_config(kind: str, args: argparse.Namespace, seed: int):
    designers = DESIGNERS
    if kind not in designers:
        raise ValueError(f"unknown designer {kind!r}; choose one of {', '.join(designers)}")
    config_class = designers[kind].config_class
    own = {f.name for f in fields(config_class)}
    given = {
        f.name: getattr(args, f.name)
        for cls in designers.values()
        for f in fields(cls.config_class)
        if f.name != "seed" and getattr(args, f.name, None) is not None
    }
    foreign = sorted(set(given) - own)
    if foreign:
        raise ValueError(f"{', '.join(flag(name) for name in foreign)} do not apply to the {kind} designer")
    return config_class(**given, seed=seed)


def _cmd_train(args: argparse.Namespace) -> int:
    config, where = config_from_args(DesignTrainConfig, args), config_from_args(DesignTrainRun, args)
    settings = designer_config(config.designer, args, config.seed)
    out = Path(where.out or f"runs/design/{config.benchmark}-{config.designer}")
    # everything that can fail at the start fails before `out` is written, so the corrected command can run
    train, val = design_splits(
        config.benchmark, config.train_size, config.val_size, config.seed, config.data_path, config.allow_code_execution
    )
    team = configured_team(config)
    team.check_tasks([s.task for s in [*train, *val]])  # shards, and every model loaded and the context checked
    benchmark = make_benchmark(config.benchmark, config.data_path, config.seed, config.allow_code_execution)
    designer = DESIGNERS[config.designer](settings, metric=benchmark.reward)
    started = time.perf_counter()
    with design_run(out, {"run": asdict(config), "designer": asdict(settings)}, where.resume):
        designer.compile(team, train, val, out=out, resume=where.resume)
    designer.training["wall_seconds_this_process"] = time.perf_counter() - started
    designer.save(out / "designer")
    pictures = _design_pictures(designer, [example_task(s) for s in val], out)
    print(_train_report(designer, out, pictures))
    return 0


def _design_pictures(designer: Designer, tasks: list[Task], out: Path) -> list[Path]:
    """The designer's before/after pictures (`kvmesh.graph.pictures`) from the graphs it chooses for `tasks`
    (one placeholder task when there are none: a fixed-graph designer's graph needs no task)."""
    team = designer.team
    graphs = designer.design_batch(tasks or [Task("fixed graph")])
    return write_design_pictures(
        out,
        team.agent_names,
        team.graph,
        designer.candidates.edges(),
        graphs,
        designer.kind,
        designer.per_task,
        example=(tasks[0].id or 0) if tasks else None,
        **team.picture_options(),
    )


def _train_report(designer, out: Path, pictures) -> str:
    figures = designer.training
    phases = {k: v for k, v in figures.items() if isinstance(v, dict) and "seconds" in v}
    seconds = sum(v["seconds"] for v in phases.values())
    trained = figures.get("tune") or figures.get("reinforce") or {}
    chosen = trained.get("chosen") or figures.get("validation")  # what the saved weights scored on validation
    parts = ", ".join(f"{name} {phase['seconds']:.0f} s" for name, phase in phases.items())
    lines = [f"{designer.kind}: trained in {seconds:.0f} s ({parts})"]
    if chosen:
        lines.append(
            f"validation: score {chosen['score']:.3f}, {chosen['tokens']:.0f} tokens/task, "
            f"{chosen['calls']:.2f} calls/task, utility {chosen['utility']:.3f}"
        )
    lines.append(f"designer: {out / 'designer'}")
    lines.append("pictures: " + ", ".join(str(p) for p in pictures))
    return "\n".join(lines)


@dataclass
class DesignEvalConfig:
    """What `kvmesh design eval` compares on the test split.

    Args:
        benchmark: infoqa, gsm8k or humaneval.
        designers: trained designers (training folders).
        baselines: comma-separated topologies, e.g. single,chain,star,complete,random.
        out: folder for one run per designer and baseline, and the plot.
        limit: only the first N test tasks (after leaving out seen ones).
        model: model of the baseline teams.
        agents: agents in the baseline teams.
        max_new_tokens: cap per turn in the baseline teams.
        channel: channel of the baseline teams.
        seed: seed for sampling and InfoQA generation.
        batch_size: tasks per batched pass.
        data_path: GSM8K folder (else KVMESH_GSM8K_PATH).
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
    channel: str = field(default=DEFAULT_CHANNEL, metadata={"choices": available_channels})
    seed: int = 0
    batch_size: int = 16
    data_path: str | None = None
    allow_code_execution: bool = False
    resume: bool = False


def _cmd_eval(args: argparse.Namespace) -> int:
    config = config_from_args(DesignEvalConfig, args)
    out = Path(config.out)
    shared = {
        "benchmark": config.benchmark,
        "split": "test",
        "limit": config.limit,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "data_path": config.data_path,
        "allow_code_execution": config.allow_code_execution,
    }
    folders = [designer_folder(path) for path in config.designers or []]
    shared["exclude_ids"] = _seen_test_ids(config, folders)
    runs: list[tuple[str, EvalConfig]] = []
    team = {"model": config.model, "agents": config.agents, "max_new_tokens": config.max_new_tokens}
    for baseline in [b for b in config.baselines.split(",") if b]:
        # one agent alone cannot hold every InfoQA shard as its own: it reads them all (the no-communication ceiling)
        shards = "all" if baseline == "single" and config.benchmark == "infoqa" else "own"
        runs.append((baseline, EvalConfig(**shared, **team, topology=baseline, channel=config.channel, shards=shards)))
    for folder in folders:
        name = folder.parent.name if folder.name == "designer" else folder.name
        runs.append((name, EvalConfig(**shared, designer=str(folder))))
    if not runs:
        raise ConfigError("name {baselines}, {designers} or both")
    for name, run in runs:
        print(f"== {name}")
        run_eval(run, out / name, resume=config.resume, load_designer=load_designer)
    folders = [out / name for name, _ in runs]
    print(compare_table([str(f) for f in folders]))
    points = [Point.from_run(f, name) for f, (name, _) in zip(folders, runs, strict=True)]
    plot = plot_tradeoff(points, out / "tradeoff.png", title=f"{config.benchmark} test: accuracy against tokens")
    (out / "tradeoff.json").write_text(json.dumps([asdict(p) for p in points], indent=2))
    print(f"\ntrade-off plot: {plot}")
    return 0


def _seen_test_ids(config: DesignEvalConfig, folders: list[Path]) -> list[str]:
    """Test ids any of the designers trained or validated on: every run leaves them out, so all of them,
    baselines included, are scored on the same tasks (none on InfoQA or GSM8K, whose splits are disjoint)."""
    seen = set()
    for folder in folders:
        seen |= set(json.loads((folder / DESIGNER_FILE).read_text()).get("seen_ids", []))
    if not seen:
        return []
    benchmark = make_benchmark(config.benchmark, config.data_path, config.seed, config.allow_code_execution)
    return sorted(seen & {sample.id for sample in benchmark.samples("test")})


@dataclass
class DesignPlotConfig:
    """What `kvmesh design plot` draws.

    Args:
        runs: run folders holding summary.json.
        output: a .png or .svg file.
    """

    runs: list[str]
    output: str = field(metadata={"short": "-o"})


def _cmd_plot(args: argparse.Namespace) -> int:
    config = config_from_args(DesignPlotConfig, args)
    points = [Point.from_run(run) for run in config.runs]
    print(f"wrote {plot_tradeoff(points, config.output)}")
    return 0


def add_parser(commands) -> None:
    design = commands.add_parser("design", help="learn a team's topology (edge-logits, gdesigner, agp) and compare")
    kinds = design.add_subparsers(dest="design_command", required=True)

    train = kinds.add_parser("train", help="train a designer on a benchmark's training and validation tasks")
    add_config_arguments(train, DesignTrainConfig, positional={"benchmark": None})
    _add_designer_settings(train)
    add_config_arguments(train, DesignTrainRun)
    train.set_defaults(handler=_cmd_train)

    evaluate = kinds.add_parser("eval", help="run designers and fixed topologies on the test split; trade-off plot")
    add_config_arguments(evaluate, DesignEvalConfig, positional={"benchmark": None})
    evaluate.set_defaults(handler=_cmd_eval)

    plot = kinds.add_parser("plot", help="the trade-off plot of finished runs")
    add_config_arguments(plot, DesignPlotConfig, positional={"runs": "+"})
    plot.set_defaults(handler=_cmd_plot)
