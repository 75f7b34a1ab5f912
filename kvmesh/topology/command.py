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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kvmesh.cliargs import add_config_arguments, config_from_args, field_help
from kvmesh.evals.benchmarks import BENCHMARKS


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
        max_new_tokens: cap on tokens per agent turn.
        train_size: training tasks.
        val_size: validation tasks, disjoint from the training tasks.
        seed: seeds the data, graph sampling and initial weights.
        data_path: GSM8K folder (else KVMESH_GSM8K_PATH).
        allow_code_execution: lets the roles' tools and HumanEval run generated code in the sandbox (not a
            security boundary).
        channel: text or kv-reuse, on every edge the designer chooses.
    """

    benchmark: str = "infoqa"
    designer: str = "agp"
    model: str = "smollm2-135m"
    topology: str = "complete"
    agents: int = 3
    rounds: int = 1
    max_new_tokens: int = 48
    train_size: int = 128
    val_size: int = 48
    seed: int = 0
    data_path: str | None = None
    allow_code_execution: bool = False
    channel: str = "text"


def _designer_classes():
    from kvmesh.topology import DESIGNERS

    return DESIGNERS


def _add_designer_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of any designer; unset flags keep the chosen designer's defaults."""
    from kvmesh.topology.designer import DesignerConfig

    designers = _designer_classes()
    shared = field_help(DesignerConfig)
    seen: set[str] = set()
    for cls in designers.values():
        helps = field_help(cls.config_class)
        for field in fields(cls.config_class):
            if field.name in seen or field.name == "seed":
                continue
            seen.add(field.name)
            defaults = {
                kind: other.config_class.__dataclass_fields__[field.name].default
                for kind, other in designers.items()
                if field.name in other.config_class.__dataclass_fields__
            }
            if len(set(defaults.values())) == 1:
                default = f"default {field.default}"
            else:
                default = "default " + ", ".join(f"{kind} {value}" for kind, value in defaults.items())
            which = "" if len(defaults) == len(designers) else f"{', '.join(defaults)} only; "
            kind = type(field.default)
            style = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
            parser.add_argument(
                "--" + field.name.replace("_", "-"),
                default=None,
                help=f"{shared.get(field.name) or helps.get(field.name, '')} ({which}{default})",
                **style,
            )


def designer_config(kind: str, args: argparse.Namespace, seed: int):
    designers = _designer_classes()
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
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise ValueError(f"{flags} do not apply to the {kind} designer")
    return config_class(**given, seed=seed)


def _benchmark_metric(config: DesignTrainConfig):
    from kvmesh.evals.benchmarks import make_benchmark

    benchmark = make_benchmark(config.benchmark, config.data_path, config.seed, config.allow_code_execution)

    def metric(sample, result) -> float:
        return float(benchmark.score(sample, result.answer or "").correct)

    return metric


def _check_resume(out: Path, saved: dict, resume: bool) -> None:
    path = out / "config.json"
    if path.exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a designer run; pass --resume or pick another --out")
        previous = json.loads(path.read_text())
        if previous != saved:
            changed = sorted(k for k in set(previous) | set(saved) if previous.get(k) != saved.get(k))
            raise ValueError(f"{out} holds a run with other settings (changed: {changed}); pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2))


def _cmd_train(args: argparse.Namespace) -> int:
    from kvmesh.evals.roles import benchmark_team
    from kvmesh.topology import DESIGNERS
    from kvmesh.topology.designer import example_task
    from kvmesh.topology.pictures import write_design_pictures
    from kvmesh.topology.splits import design_splits

    config = config_from_args(DesignTrainConfig, args)
    settings = designer_config(config.designer, args, config.seed)
    out = Path(args.out or f"runs/design/{config.benchmark}-{config.designer}")
    _check_resume(out, {"run": asdict(config), "designer": asdict(settings)}, args.resume)
    train, val = design_splits(
        config.benchmark, config.train_size, config.val_size, config.seed, config.data_path, config.allow_code_execution
    )
    team = benchmark_team(
        config.benchmark,
        config.model,
        config.topology,
        config.agents,
        config.rounds,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        code_execution=config.allow_code_execution,
        channel=config.channel,
    )
    designer = DESIGNERS[config.designer](settings, metric=_benchmark_metric(config))
    started = time.perf_counter()
    designer.compile(team, train, val, out=out, resume=args.resume)
    designer.training["wall_seconds_this_process"] = time.perf_counter() - started
    designer.save(out / "designer")
    pictures = write_design_pictures(designer, [example_task(s) for s in val], out)
    print(_train_report(designer, out, pictures))
    return 0


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


def designer_folder(path: str) -> Path:
    """A saved designer, given as its own folder or as the training folder holding `designer/`."""
    from kvmesh.topology.designer import DESIGNER_FILE

    folder = Path(path)
    if (folder / "designer" / DESIGNER_FILE).is_file():
        return folder / "designer"
    if (folder / DESIGNER_FILE).is_file():
        return folder
    raise FileNotFoundError(f"{path} holds no saved designer; train one with `kvmesh design train`")


def _cmd_eval(args: argparse.Namespace) -> int:
    from kvmesh.evals.report import compare_table
    from kvmesh.evals.runner import EvalConfig, run_eval
    from kvmesh.topology.tradeoff import Point, plot_tradeoff

    out = Path(args.out)
    shared = {
        "benchmark": args.benchmark,
        "split": "test",
        "limit": args.limit,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "data_path": args.data_path,
        "allow_code_execution": args.allow_code_execution,
    }
    folders = [designer_folder(path) for path in args.designers or []]
    shared["exclude_ids"] = _seen_test_ids(args, folders)
    runs: list[tuple[str, EvalConfig]] = []
    team = {"model": args.model, "agents": args.agents, "max_new_tokens": args.max_new_tokens}
    for baseline in [b for b in (args.baselines or "").split(",") if b]:
        # one agent alone cannot hold every InfoQA shard as its own: it reads them all (the no-communication ceiling)
        shards = "all" if baseline == "single" and args.benchmark == "infoqa" else "own"
        config = EvalConfig(**shared, **team, topology=baseline, channel=args.channel, shards=shards)
        runs.append((baseline, config))
    for folder in folders:
        name = folder.parent.name if folder.name == "designer" else folder.name
        runs.append((name, EvalConfig(**shared, designer=str(folder))))
    if not runs:
        raise ValueError("name --baselines, --designers or both")
    for name, config in runs:
        print(f"== {name}")
        run_eval(config, out / name, resume=args.resume)
    folders = [out / name for name, _ in runs]
    print(compare_table([str(f) for f in folders]))
    points = [Point.from_run(f, name) for f, (name, _) in zip(folders, runs, strict=True)]
    plot = plot_tradeoff(points, out / "tradeoff.png", title=f"{args.benchmark} test: accuracy against tokens")
    (out / "tradeoff.json").write_text(json.dumps([asdict(p) for p in points], indent=2))
    print(f"\ntrade-off plot: {plot}")
    return 0


def _seen_test_ids(args: argparse.Namespace, folders: list[Path]) -> list[str]:
    """Test ids any of the designers trained or validated on: every run leaves them out, so all of them,
    baselines included, are scored on the same tasks (none on InfoQA or GSM8K, whose splits are disjoint)."""
    from kvmesh.evals.benchmarks import make_benchmark
    from kvmesh.topology.designer import DESIGNER_FILE

    seen = set()
    for folder in folders:
        seen |= set(json.loads((folder / DESIGNER_FILE).read_text()).get("seen_ids", []))
    if not seen:
        return []
    benchmark = make_benchmark(args.benchmark, args.data_path, args.seed, args.allow_code_execution)
    return sorted(seen & {sample.id for sample in benchmark.samples("test")})


def _cmd_plot(args: argparse.Namespace) -> int:
    from kvmesh.topology.tradeoff import Point, plot_tradeoff

    points = [Point.from_run(run) for run in args.runs]
    print(f"wrote {plot_tradeoff(points, args.output)}")
    return 0


def add_design_commands(commands) -> None:
    design = commands.add_parser("design", help="learn a team's topology (edge-logits, gdesigner, agp) and compare")
    kinds = design.add_subparsers(dest="design_command", required=True)

    train = kinds.add_parser("train", help="train a designer on a benchmark's training and validation tasks")
    add_config_arguments(train, DesignTrainConfig, skip=("benchmark",))
    train.add_argument("benchmark", choices=BENCHMARKS, help="infoqa, gsm8k or humaneval")
    _add_designer_settings(train)
    train.add_argument("--out", help="output folder (default runs/design/<benchmark>-<designer>)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.set_defaults(handler=_cmd_train)

    evaluate = kinds.add_parser("eval", help="run designers and fixed topologies on the test split; trade-off plot")
    evaluate.add_argument("benchmark", choices=BENCHMARKS)
    evaluate.add_argument("--designers", nargs="+", metavar="DIR", help="trained designers (training folders)")
    evaluate.add_argument("--baselines", help="comma-separated topologies, e.g. single,chain,star,complete,random")
    evaluate.add_argument("--out", required=True, help="folder for one run per designer and baseline, and the plot")
    evaluate.add_argument(
        "--limit", type=int, default=None, help="only the first N test tasks (after leaving out seen ones)"
    )
    evaluate.add_argument("--model", default="smollm2-135m", help="model of the baseline teams")
    evaluate.add_argument("--agents", type=int, default=3, help="agents in the baseline teams")
    evaluate.add_argument("--max-new-tokens", type=int, default=48, help="cap per turn in the baseline teams")
    evaluate.add_argument("--channel", default="text", help="channel of the baseline teams")
    evaluate.add_argument("--seed", type=int, default=0, help="seed for sampling and InfoQA generation")
    evaluate.add_argument("--batch-size", type=int, default=16, help="tasks per batched pass")
    evaluate.add_argument("--data-path", help="GSM8K folder (else KVMESH_GSM8K_PATH)")
    evaluate.add_argument("--allow-code-execution", action="store_true", help="run generated code (sandboxed)")
    evaluate.add_argument("--resume", action="store_true", help="continue interrupted runs in --out")
    evaluate.set_defaults(handler=_cmd_eval)

    plot = kinds.add_parser("plot", help="the trade-off plot of finished runs")
    plot.add_argument("runs", nargs="+", help="run folders holding summary.json")
    plot.add_argument("-o", "--output", required=True, help="a .png or .svg file")
    plot.set_defaults(handler=_cmd_plot)
