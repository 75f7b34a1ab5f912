"""`kvmesh` command line: run a team on a question, evaluate it on a benchmark, list models, run the demo.

kvmesh run "What is 17 * 3?" --topology chain --agents 3 --rounds 1 --decision decision
kvmesh run "..." --spec team.yaml --json
kvmesh eval infoqa --topology chain --agents 3 --limit 200 --out runs/chain
kvmesh eval humaneval --oracle --allow-code-execution --out runs/oracle
kvmesh report runs/single runs/chain
kvmesh design train infoqa --designer agp --out runs/design/agp     (see kvmesh.topology.command)
kvmesh models
kvmesh demo
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from kvmesh.agents import Agent, ChannelNotAvailableError, CommGraph, Task, Team
from kvmesh.agents.decision import METHODS
from kvmesh.agents.graph import RUNNABLE_CHANNELS
from kvmesh.agents.result import TeamResult
from kvmesh.agents.usage import format_rows
from kvmesh.cliargs import add_config_arguments, config_from_args
from kvmesh.kvcomm.benchmark import KVReuseBenchConfig
from kvmesh.llm import ModelNotAvailableError
from kvmesh.llm.registry import ALIASES, cache_dir, is_converted, is_installed
from kvmesh.topology.command import add_design_commands
from kvmesh.topology.presets import PRESETS

DEFAULT_ROLES = ("analyst", "solver", "critic", "expert")


def default_agents(count: int, model: str, max_new_tokens: int, temperature: float) -> list[Agent]:
    """`count` generic agents named agent_1..agent_N with roles cycling through DEFAULT_ROLES."""
    if count < 1:
        raise ValueError(f"--agents must be at least 1, got {count}")
    return [
        Agent(
            f"agent_{i + 1}",
            DEFAULT_ROLES[i % len(DEFAULT_ROLES)],
            model=model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
        for i in range(count)
    ]


CHANNEL_HELP = "how agents read each other: text, or kv-reuse (the senders' KV caches, reused)"


def build_team(args: argparse.Namespace) -> Team:
    if args.designer:
        from kvmesh.topology import load_designer
        from kvmesh.topology.command import designer_folder

        return load_designer(designer_folder(args.designer)).apply()
    if args.spec:
        return Team.from_spec(args.spec)
    agents = default_agents(args.agents, args.model, args.max_new_tokens, args.temperature)
    graph = CommGraph.preset(args.topology, agents).with_channel(args.channel)
    decision = {"method": args.decision, **({"channel": args.channel} if args.decision == "decision" else {})}
    return Team(
        agents,
        graph,
        rounds=args.rounds,
        decision=decision,
        token_budget=args.token_budget,
        seed=args.seed,
    )


def print_result(result: TeamResult, out=sys.stdout) -> None:
    print(result.transcript(), file=out)
    print(f"\nANSWER: {result.answer}", file=out)
    if result.budget_exhausted:
        print(f"(stopped early: token budget spent; skipped {len(result.skipped)} turns)", file=out)
    print("\n" + result.usage.table(), file=out)


def _cmd_run(args: argparse.Namespace) -> int:
    team = build_team(args)
    result = team.run(Task(args.question))
    if args.graph_out:
        _team_picture(team, result, args.graph_out)
    if team.designer is not None and not args.json:
        edges = ", ".join(f"{e.source}->{e.target}" for e in result.graph.edges()) or "none"
        print(f"designed graph: agents {', '.join(result.graph.agents)}; edges {edges}", file=sys.stderr)
    if args.json:
        data = result.to_dict()
        print(json.dumps({k: data[k] for k in ("answer", "messages", "usage", "stop_reason", "graph")}, indent=2))
    else:
        print_result(result)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    rows = [("alias", "installed", "converted", "description")]
    for name, alias in ALIASES.items():
        rows.append(
            (
                name,
                "yes" if is_installed(name) else "no",
                "yes" if is_converted(name) else "no",
                alias.description,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    missing = [a for a in ALIASES.values() if not is_installed(a.name)]
    for alias in missing:
        print(f"\nto install {alias.name}: {alias.install_hint}")
    print(f"\nconverted models live in {cache_dir() / 'models'} (set KVMESH_CACHE to move them)")
    return 0


DEMO_TASK = Task(
    id="demo",
    question="In which city does Maya's sister live?",
    shards=[
        "Maya has one sister. Her sister is called Lena. Maya works as a nurse.",
        "Lena lives in Lisbon. Tom lives in Oslo.",
        "Lena likes to paint. Tom has a dog.",
    ],
)


def demo_team(model: str = "smollm2-135m") -> Team:
    """Three agents, each holding part of the facts; only by relaying them can the team answer."""
    agents = [
        Agent("family", "family expert", model=model, max_new_tokens=48),
        Agent("places", "places expert", model=model, max_new_tokens=48),
        Agent("hobbies", "hobbies expert", model=model, max_new_tokens=48),
    ]
    for agent in agents:  # small models relay facts far better than they reason about them
        agent.system_prompt = (
            f"You are the {agent.role}. Copy the sentences from your notes that are about the people in the "
            "question. Do not add anything else."
        )
    return Team(agents, "chain", rounds=1, decision="decision")


def _cmd_demo(args: argparse.Namespace) -> int:
    team = demo_team(args.model)
    print(f"kvmesh demo: 3 agents on {args.model}, chain topology; each agent holds private notes.\n")
    print(f"QUESTION: {DEMO_TASK.question}\n")
    print_result(team.run(DEMO_TASK))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from kvmesh.evals.report import compare_table
    from kvmesh.evals.runner import EvalConfig, run_eval
    from kvmesh.topology.command import designer_folder

    if args.compare:
        print(compare_table(args.compare))
        return 0
    if not args.benchmark:
        raise ValueError("name a benchmark (gsm8k, humaneval or infoqa), or pass --compare RUN [RUN ...]")
    config = EvalConfig(
        benchmark=args.benchmark,
        model=args.model,
        topology=args.topology,
        agents=args.agents,
        rounds=args.rounds,
        decision=args.decision,
        spec=args.spec,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        data_path=args.data_path,
        allow_code_execution=args.allow_code_execution,
        oracle=args.oracle,
        completions=args.completions,
        shards=args.shards,
        channel=args.channel,
        designer=str(designer_folder(args.designer)) if args.designer else None,
    )
    out = args.out or f"runs/{args.benchmark}-{'oracle' if args.oracle else args.topology}"
    run_eval(config, out, resume=args.resume)
    print(compare_table([out]))
    print(f"\nresults: {out}/samples.jsonl and {out}/summary.json")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from kvmesh.kvcomm.benchmark import run_benchmark

    config = config_from_args(KVReuseBenchConfig, args)
    result = run_benchmark(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [
        (f"agent {k + 1}", f"{d:.3f} s", f"{r:.3f} s", f"{d / r:.1f}x")
        for k, (d, r) in enumerate(zip(result["ttft_dense_s"], result["ttft_reuse_s"], strict=True))
    ]
    print("\n".join(format_rows([("", "TTFT dense", "TTFT reuse", "speedup"), *rows])))
    for key in ("speedup_last_agent", "reuse_rate", "agreement", "anchor_memory_mb", "template_encode_s"):
        print(f"{key:20s} {result[key]:.3f}")
    return 0


def _cmd_viz(args: argparse.Namespace) -> int:
    from kvmesh.topology.draw import write_picture
    from kvmesh.topology.report import read_picture_source, write_report

    if args.output.lower().endswith(".html"):
        print(f"wrote {write_report(args.source, args.output)}")
        return 0
    graph, options = read_picture_source(args.source)
    print(f"wrote {write_picture(graph, args.output, **options)}")
    return 0


def _team_picture(team: Team, result: TeamResult, path: str) -> None:
    from kvmesh.topology.draw import team_picture_options, write_picture

    tokens = {key: usage.input_tokens for key, usage in result.usage.per_edge.items()}
    written = write_picture(result.graph, path, tokens=tokens, **team_picture_options(team))  # the graph it ran on
    print(f"graph picture: {written}", file=sys.stderr)  # stdout may be --json


def _cmd_report(args: argparse.Namespace) -> int:
    from kvmesh.evals.report import compare_table

    print(compare_table(args.runs))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmesh", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a team on one question")
    run.add_argument("question", help="the question to put to the team")
    run.add_argument("--model", default="smollm2-135m", help="alias, local folder or Hugging Face id")
    run.add_argument("--topology", default="chain", choices=PRESETS, help="communication graph preset")
    run.add_argument("--agents", type=int, default=3, help="number of agents (ignored with --spec)")
    run.add_argument("--rounds", type=int, default=1, help="rounds of communication")
    run.add_argument("--decision", default="decision", choices=METHODS, help="how the final answer is chosen")
    run.add_argument("--spec", help="a YAML or JSON team spec; replaces the team options above")
    run.add_argument("--designer", help="a trained designer (kvmesh design train): its team, on the graph it designs")
    run.add_argument("--channel", default="text", choices=RUNNABLE_CHANNELS, help=CHANNEL_HELP)
    run.add_argument("--max-new-tokens", type=int, default=128, help="cap on tokens per agent turn")
    run.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    run.add_argument("--token-budget", type=int, default=None, help="cap on tokens for the whole run")
    run.add_argument("--seed", type=int, default=None, help="seed for sampling")
    run.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    run.add_argument("--graph-out", help="also write the graph with this run's edge tokens (.png, .svg, .mmd, .dot)")
    run.set_defaults(handler=_cmd_run)

    evaluate = commands.add_parser("eval", help="run a team on a benchmark (gsm8k, humaneval, infoqa)")
    evaluate.add_argument("benchmark", nargs="?", choices=["gsm8k", "humaneval", "infoqa"])
    evaluate.add_argument("--model", default="smollm2-135m", help="alias, local folder or Hugging Face id")
    evaluate.add_argument("--topology", default="chain", choices=[*PRESETS, "single"], help="graph preset or single")
    evaluate.add_argument("--agents", type=int, default=3, help="number of agents")
    evaluate.add_argument("--rounds", type=int, default=1, help="rounds of communication")
    evaluate.add_argument("--decision", default="decision", choices=METHODS, help="how the final answer is chosen")
    evaluate.add_argument("--spec", help="a YAML or JSON team spec; replaces the team options above")
    evaluate.add_argument(
        "--designer", help="a trained designer (kvmesh design train): its team, each task on its designed graph"
    )
    evaluate.add_argument("--channel", default="text", choices=RUNNABLE_CHANNELS, help=CHANNEL_HELP)
    evaluate.add_argument("--split", default="test", help="data split")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N samples")
    evaluate.add_argument("--seed", type=int, default=0, help="seed for sampling and InfoQA generation")
    evaluate.add_argument("--batch-size", type=int, default=16, help="tasks per batched pass")
    evaluate.add_argument("--max-new-tokens", type=int, default=256, help="cap on tokens per agent turn")
    evaluate.add_argument("--data-path", help="GSM8K folder (else KVMESH_GSM8K_PATH) or an InfoQA JSONL file")
    evaluate.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="allow HumanEval to run model-written code (sandboxed, not a security boundary)",
    )
    evaluate.add_argument("--oracle", action="store_true", help="score gold answers instead of running a model")
    evaluate.add_argument("--completions", help="JSONL of {id, completion} to score instead of running a model")
    evaluate.add_argument(
        "--shards",
        default="own",
        choices=["own", "all", "none"],
        help="InfoQA: each agent reads its own shard (default), every shard, or none",
    )
    evaluate.add_argument("--out", help="run folder (default runs/<benchmark>-<topology>)")
    evaluate.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    evaluate.add_argument("--compare", nargs="+", metavar="RUN", help="print finished runs side by side")
    evaluate.set_defaults(handler=_cmd_eval)

    viz = commands.add_parser("viz", help="draw a graph JSON file or an evaluation run (picture or HTML report)")
    viz.add_argument("source", help="a graph JSON file (CommGraph.to_json) or a run folder from kvmesh eval")
    viz.add_argument(
        "-o", "--output", required=True, help="output file: .png, .svg, .mmd (Mermaid), .dot, or .html (a report page)"
    )
    viz.set_defaults(handler=_cmd_viz)

    report = commands.add_parser("report", help="print finished evaluation runs side by side")
    report.add_argument("runs", nargs="+", help="run folders holding summary.json")
    report.set_defaults(handler=_cmd_report)

    bench = commands.add_parser("bench", help="performance benchmarks (kv-reuse: time to first token)")
    bench_kinds = bench.add_subparsers(dest="kind", required=True)
    kv_reuse = bench_kinds.add_parser("kv-reuse", help="dense prefill against KV cache reuse, KVCOMM's setting")
    add_config_arguments(kv_reuse, KVReuseBenchConfig)
    kv_reuse.add_argument("--json", action="store_true", help="print one JSON object")
    kv_reuse.set_defaults(handler=_cmd_bench)

    add_design_commands(commands)

    models = commands.add_parser("models", help="list model aliases and whether they are ready")
    models.set_defaults(handler=_cmd_models)

    demo = commands.add_parser("demo", help="a three-agent team answering a question no agent can alone")
    demo.add_argument("--model", default="smollm2-135m")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _quiet_libraries() -> None:
    """Our own progress messages go to stderr; transformers' per-load progress bars are noise here."""
    logging.basicConfig(level=logging.INFO, format="kvmesh: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return args.handler(args)
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        PermissionError,
        ModelNotAvailableError,
        ChannelNotAvailableError,
        FileExistsError,
        RuntimeError,
    ) as error:
        print(f"kvmesh: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
