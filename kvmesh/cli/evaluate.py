"""`kvmesh eval`: run a team on a benchmark into a run folder, and print its summary (`kvmesh.evals.runner`).

kvmesh eval infoqa --topology chain --agents 3 --limit 200 --out runs/infoqa-chain
kvmesh eval humaneval --oracle --allow-code-execution --out runs/oracle
kvmesh eval infoqa --designer runs/design/infoqa-agp --limit 50
kvmesh eval --compare runs/a runs/b
kvmesh eval infoqa --limit 32 --ray --workers 2 --out runs/infoqa-ray   (a local Ray instance; --ray-address ADDR)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from kvmesh.cli.flags import add_channel_arguments, add_config_arguments, config_from_args, refuse_team_flags
from kvmesh.cli.specs import designer_folder
from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks import BENCHMARKS
from kvmesh.evals.executors import LOCAL, RayExecutor
from kvmesh.evals.report import compare_report, compare_table
from kvmesh.evals.runner import EvalConfig, run_eval
from kvmesh.evals.store import read_samples
from kvmesh.topology import load_designer


@dataclass
class EvalRun:
    """Where `kvmesh eval` writes, and what else it can do.

    Args:
        out: run folder (default runs/<benchmark>-<topology>).
        resume: continue an interrupted run in --out.
        compare: print finished runs side by side instead of running one.
        ray: spread the samples over Ray actors, on a Ray instance started on this machine (or on the cluster
            at --ray-address); this process still writes every result; --resume works across Ray and local runs.
        ray_address: a Ray cluster's address to spread the samples over (implies --ray).
        workers: Ray actors (default: one per CPU of the cluster, --threads each).
        threads: torch threads per Ray actor.
    """

    out: str | None = None
    resume: bool = False
    compare: list[str] | None = None
    ray: bool = False
    ray_address: str | None = None
    workers: int | None = None
    threads: int = 1


def evaluate(args: argparse.Namespace) -> int:
    options = config_from_args(EvalRun, args)
    if options.compare:
        print(compare_report(options.compare))
        return 0
    if not args.benchmark:
        raise ConfigError(f"name a benchmark ({', '.join(BENCHMARKS)}), or pass {{compare}} RUN [RUN ...]")
    refuse_team_flags(args, EvalConfig.team_fields)
    designer = str(designer_folder(args.designer)) if args.designer else None
    config = config_from_args(EvalConfig, args, designer=designer)
    out = options.out or f"runs/{config.benchmark}-{'oracle' if config.oracle else config.topology}"
    try:
        address = options.ray_address or LOCAL
        executor = (
            RayExecutor(address, options.workers, options.threads) if options.ray or options.ray_address else None
        )
        try:
            summary = run_eval(config, out, resume=options.resume, load_designer=load_designer, executor=executor)
        finally:
            if executor is not None:
                executor.close()
    except KeyboardInterrupt:
        saved = len(read_samples(out)) if Path(out).is_dir() else 0
        again = shlex.join(["kvmesh", *args.argv, *([] if options.resume else ["--resume"])])
        where = f"{saved} finished samples are saved in {out}; continue with: {again}" if saved else "nothing was saved"
        print(f"\nkvmesh: interrupted: {where}", file=sys.stderr)
        return 130
    print(compare_table([out]))
    print(f"\nresults: {out}/samples.jsonl and {out}/summary.json")
    if summary.get("test_scorings", 0) > 1:  # choices made on test make its figures optimistic: say so
        print(
            f"kvmesh: this team and these {config.split} tasks have now been scored {summary['test_scorings']} times "
            "on this machine (summary.json: test_scorings); choose on --split validation and report the count",
            file=sys.stderr,
        )
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("eval", help="run a team on a benchmark (gsm8k, humaneval, infoqa, infoqa-projects)")
    add_config_arguments(parser, EvalConfig, skip=("exclude_ids", "channels"), positional={"benchmark": "?"})
    add_channel_arguments(parser)
    add_config_arguments(parser, EvalRun)
    parser.set_defaults(handler=evaluate)
