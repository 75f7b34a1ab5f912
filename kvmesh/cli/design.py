"""`kvmesh design train|eval|plot`: learn a team's topology on a benchmark, then compare it on held-out tasks.

kvmesh design train infoqa --designer agp --out runs/design/agp             # train + validation splits
kvmesh design train infoqa --designer agp --seeds 0 1 2 --out runs/design/agp-seeds     # one designer per seed
kvmesh design eval infoqa --designers runs/design/agp-seeds --baselines complete,single --limit 200 \\
    --out runs/design/test                                                   # test split, paired, trade-off plot
kvmesh design plot runs/design/test/* -o tradeoff.png

A training folder holds `config.json`, the saved designer (`designer/`, written last: a folder that has it is
finished), its checkpoints (`checkpoint.pt`, or `mining/` for AGP), `history.json`, `splits.json` (the ids it
trained and validated on, and how they were split) and the before/after pictures. `--resume` continues a killed
run and loads a finished one as it is. With `--seeds`, OUT/seed-N is one such folder per seed and OUT/seeds.json
holds the validation figures across seeds; `seed` changes graph sampling and initial weights, `data_seed` the
tasks, so the seeds differ only in what training drew. `design eval` lives in `design_eval.py`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path

from kvmesh.agents.task import Task
from kvmesh.cli.design_eval import DesignEvalConfig, design_eval
from kvmesh.cli.flags import add_config_arguments, argparse_help, config_from_args, flag
from kvmesh.config import field_help
from kvmesh.evals.benchmarks import BENCHMARKS, Sample, configured_team, design_splits, make_benchmark
from kvmesh.evals.figures import Point, plot_tradeoff
from kvmesh.evals.seeds import SEEDS_FILE, check_seeds, run_seeds, seeds_table
from kvmesh.graph.pictures import write_design_pictures
from kvmesh.graph.presets import PRESETS, TEMPORAL_MODES
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, channel_name
from kvmesh.runs import CONFIG, write_json
from kvmesh.topology import DESIGNERS, load_designer
from kvmesh.topology.designer import DESIGNER_FILE, Designer, DesignerConfig
from kvmesh.training.examples import example_task
from kvmesh.training.reinforce import design_run

SPLITS_FILE = "splits.json"  # in a training folder: the ids it trained and validated on, and how they were split
VALIDATION_FIGURES = ("score", "tokens", "calls", "utility")  # of the chosen weights, per task


@dataclass
class DesignTrainConfig:
    """What `kvmesh design train` runs; saved as config.json in the output folder.

    Args:
        benchmark: infoqa, infoqa-projects, gsm8k or humaneval.
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
        seed: seeds graph sampling and the designer's initial weights (the tasks are data_seed's).
        seeds: train one designer per seed, each in OUT/seed-N (resumable with --resume; a finished seed is
            loaded, not trained again), then write OUT/seeds.json: the validation figures of each seed's chosen
            weights, with their mean and 95% interval across seeds. Every seed trains on the same tasks.
        data_seed: chooses the tasks: the InfoQA generator's, or the hash split of a file or of GSM8K's train
            file into train and validation; the same for every seed. Pass it to `design eval` as --seed.
        data_path: an InfoQA JSONL file (its train and validation splits; its test split is left for `design
            eval`) or the GSM8K folder (else KVMESH_GSM8K_PATH).
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
    seeds: list[int] = field(default_factory=list)
    data_seed: int = 0
    data_path: str | None = None
    allow_code_execution: bool = False
    channel: str = field(default=DEFAULT_CHANNEL, metadata={"check": channel_name})


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
                kind: repr_default(other.config_class.__dataclass_fields__[setting.name])
                for kind, other in designers.items()
                if setting.name in other.config_class.__dataclass_fields__
            }
            if len(set(defaults.values())) == 1:
                default = f"default {defaults[next(iter(defaults))]}"
            else:
                default = "default " + ", ".join(f"{kind} {value}" for kind, value in defaults.items())
            which = "" if len(defaults) == len(designers) else f"{', '.join(defaults)} only; "
            value = setting.default_factory() if setting.default is MISSING else setting.default
            if isinstance(value, bool):
                style = {"action": argparse.BooleanOptionalAction}
            elif isinstance(value, list):
                style = {"nargs": "+", "type": str}
            else:
                style = {"type": type(value)}
            suffix = f" ({which}{default})" if value not in ("", []) or which else ""
            text = shared.get(setting.name) or helps.get(setting.name, "")
            parser.add_argument(flag(setting.name), default=None, help=argparse_help(text + suffix), **style)


def repr_default(setting: Field) -> str:
    """A setting's default as help shows it."""
    return str(setting.default_factory() if setting.default is MISSING else setting.default)


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
    out = Path(where.out or f"runs/design/{config.benchmark}-{config.designer}")
    # everything that can fail at the start fails before `out` is written, so the corrected command can run
    seeds = _check_seeds(config, args, out)
    settings = {seed: designer_config(config.designer, args, seed) for seed in seeds}
    train, val = design_splits(
        config.benchmark,
        config.train_size,
        config.val_size,
        config.data_seed,
        config.data_path,
        config.allow_code_execution,
    )
    # shards, and every model loaded and the context checked
    configured_team(config).check_tasks([s.task for s in [*train, *val]])
    if not config.seeds:
        print(train_designer(config, settings[config.seed], out, where.resume, train, val)[1])
        return 0

    def run_one(seed: int, folder: Path):
        print(f"== seed {seed}: {folder}")
        one = replace(config, seed=seed, seeds=[])
        designer, report = train_designer(one, settings[seed], folder, where.resume, train, val)
        print(report)
        return designer

    def figures_of(designer) -> dict[str, float]:
        return {f"validation/{name}": value for name, value in validation_figures(designer.training).items()}

    shared = {name: value for name, value in asdict(settings[seeds[0]]).items() if name != "seed"}
    summary, _designers = run_seeds(seeds, out, run_one, figures_of, config=asdict(config), designer=shared)
    print("\n".join(["", *seeds_table(summary, "chosen weights")]))
    print(f"{len(seeds)} seeds: {out / SEEDS_FILE}; each seed's training folder is {out}/seed-N")
    return 0


def _check_seeds(config: DesignTrainConfig, args: argparse.Namespace, out: Path) -> list[int]:
    """The seeds to train (`seed` alone without `seeds`); refuses both flags at once, and a folder that holds
    the other kind of run (a single run's config.json, or a seeds run's seeds.json)."""
    if not config.seeds:
        if (out / SEEDS_FILE).is_file():
            raise ValueError(f"{out} holds a --seeds run ({SEEDS_FILE}); pass --seeds, or pick another --out")
        return [config.seed]
    if "seed" in args.given:
        raise ValueError("--seed and --seeds both given: --seeds lists every seed to train; drop --seed")
    if (out / CONFIG).is_file():
        raise ValueError(f"{out} holds a single training run ({CONFIG}); pick another --out for --seeds")
    return check_seeds(config.seeds)


def train_designer(
    config: DesignTrainConfig,
    settings: DesignerConfig,
    out: Path,
    resume: bool,
    train: list[Sample],
    val: list[Sample],
) -> tuple[Designer, str]:
    """Train one designer on `train` (choosing its weights on `val`) into `out` and save it; resumes a killed
    run, and loads a finished one (its designer saved) as it is instead of training it again. Returns the
    designer and the report to print."""
    saved = out / "designer"
    record = {"run": {name: value for name, value in asdict(config).items() if name != "seeds"}}
    with design_run(out, record | {"designer": asdict(settings)}, resume) as opened:
        if opened.resumed and (saved / DESIGNER_FILE).is_file():
            designer = load_designer(saved)
            _check_seen(designer, train, val, out)
            return designer, _train_report(designer, out, None)
        benchmark = make_benchmark(config.benchmark, config.data_path, config.data_seed, config.allow_code_execution)
        write_json(out / SPLITS_FILE, _splits_record(config, benchmark, train, val))
        designer = DESIGNERS[config.designer](settings, metric=benchmark.reward)
        started = time.perf_counter()
        designer.compile(configured_team(config), train, val, out=out, resume=resume)
    designer.training["wall_seconds_this_process"] = time.perf_counter() - started
    pictures = _design_pictures(designer, [example_task(s) for s in val], out)
    designer.save(saved)  # last: a folder with a saved designer holds a finished run
    return designer, _train_report(designer, out, pictures)


def _splits_record(config: DesignTrainConfig, benchmark, train: list[Sample], val: list[Sample]) -> dict:
    """What splits.json holds: the ids trained and validated on, and how each split was chosen."""

    record = {"benchmark": config.benchmark, "data_path": config.data_path, "data_seed": config.data_seed}
    return record | {
        "train": {"rule": benchmark.split_rule("train").to_dict(), "ids": [s.id for s in train]},
        "validation": {"rule": benchmark.split_rule("validation").to_dict(), "ids": [s.id for s in val]},
    }


def _check_seen(designer: Designer, train: list[Sample], val: list[Sample], out: Path) -> None:
    """Refuse a finished run whose designer saw other tasks than the settings choose now (an edited file)."""
    if designer.seen_ids and set(designer.seen_ids) != {s.id for s in [*train, *val]}:
        raise ValueError(
            f"{out} holds a designer trained on other tasks than these settings choose (was the data file "
            "edited?); train into a new --out"
        )


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
        channels=designer.channels,
        **team.picture_options(),
    )


def validation_figures(training: dict) -> dict[str, float]:
    """What the saved weights (the ones chosen on validation) scored there, per task: score, tokens, calls and
    utility; {} when the designer had no validation tasks."""
    trained = training.get("tune") or training.get("reinforce") or {}
    chosen = trained.get("chosen") or training.get("validation")
    return {name: chosen[name] for name in VALIDATION_FIGURES} if chosen else {}


def _train_report(designer: Designer, out: Path, pictures: list[Path] | None) -> str:
    """What `design train` prints about one designer; `pictures` None: a finished run, loaded as it was."""
    figures = designer.training
    phases = {k: v for k, v in figures.items() if isinstance(v, dict) and "seconds" in v}
    seconds = sum(v["seconds"] for v in phases.values())
    parts = ", ".join(f"{name} {phase['seconds']:.0f} s" for name, phase in phases.items())
    done = "finished earlier, not trained again: " if pictures is None else ""
    lines = [f"{designer.kind}: {done}trained in {seconds:.0f} s ({parts})"]
    chosen = validation_figures(figures)
    if chosen:
        seconds = f", {chosen['call_seconds']:.2f} s/task" if "call_seconds" in chosen else ""  # older lack it
        lines.append(
            f"validation: score {chosen['score']:.3f}, {chosen['tokens']:.0f} tokens/task{seconds}, "
            f"{chosen['calls']:.2f} calls/task, utility {chosen['utility']:.3f} (cost: {designer.config.cost})"
        )
    lines.append(f"designer: {out / 'designer'}")
    if pictures is not None:
        lines.append("pictures: " + ", ".join(str(p) for p in pictures))
    return "\n".join(lines)


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
    evaluate.set_defaults(handler=design_eval)

    plot = kinds.add_parser("plot", help="the trade-off plot of finished runs")
    add_config_arguments(plot, DesignPlotConfig, positional={"runs": "+"})
    plot.set_defaults(handler=_cmd_plot)
