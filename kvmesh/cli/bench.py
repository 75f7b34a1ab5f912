"""`kvmesh bench kv-reuse|latent`: time to first token with KV cache reuse; latent channels against text on InfoQA
(`kvmesh.evals.studies`)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.evals.seeds import run_seeds, seeds_table
from kvmesh.evals.studies import latent, latent_report
from kvmesh.evals.studies.kv_reuse import KVReuseStudyConfig, format_table, run_study


@dataclass
class BenchOutput:
    """How `kvmesh bench` prints.

    Args:
        json: print one JSON object.
    """

    json: bool = False


def bench_kv_reuse(args: argparse.Namespace) -> int:
    config = config_from_args(KVReuseStudyConfig, args)
    result = run_study(config, progress=_say)
    if config_from_args(BenchOutput, args).json:
        print(json.dumps(result))
        return 0
    print("\n".join(format_table(result)))
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def bench_latent_seeds(config: latent.LatentStudyConfig) -> dict:
    """One study per seed in OUT/seed-N (each resumable), then OUT/seeds.json across them."""

    def run_one(seed: int, folder: Path) -> dict:
        one = replace(config, seed=seed, seeds=[], out=str(folder))
        return latent.run_study(one, progress=lambda line: _say(f"seed {seed}: {line}"))

    summary, _reports = run_seeds(config.seeds, config.out, run_one, latent_report.seed_figures, config=asdict(config))
    return summary


def bench_latent(args: argparse.Namespace) -> int:
    config = config_from_args(latent.LatentStudyConfig, args)
    if config.seeds:
        summary = bench_latent_seeds(config)
        print("\n".join(seeds_table(summary)))
        return 0
    result = latent.run_study(config, progress=_say)
    if config_from_args(BenchOutput, args).json:
        print(json.dumps(result))
        return 0
    print("\n".join(latent_report.format_table(result)))
    return 0


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks (kv-reuse: time to first token; latent: channels on InfoQA)")
    kinds = bench.add_subparsers(dest="kind", required=True)
    kv_reuse = kinds.add_parser("kv-reuse", help="dense prefill against KV cache reuse, KVCOMM's setting")
    add_config_arguments(kv_reuse, KVReuseStudyConfig)
    add_config_arguments(kv_reuse, BenchOutput)
    kv_reuse.set_defaults(handler=bench_kv_reuse)
    latent_parser = kinds.add_parser(
        "latent", help="text, kv-select and c2c against no talk and the skyline, on InfoQA"
    )
    add_config_arguments(latent_parser, latent.LatentStudyConfig)
    add_config_arguments(latent_parser, BenchOutput)
    latent_parser.set_defaults(handler=bench_latent)
