"""`kvmesh optima train`: Optima's iterative SFT/DPO with LoRA on a team (`kvmesh.training.optima`).

kvmesh optima train --task infoqa --model smollm2-135m --method sft --iterations 2 --out runs/optima

Prints each step as it finishes and, at the end, every point of the path (iteration 0, the prompt-only compact
baseline, each iteration) with validation accuracy, F1 and tokens per task, and the iteration chosen on
validation; `--test` adds the test scores of the choice and both baselines with paired comparisons, and `--seeds
0 1 2` runs once per seed and prints every figure across seeds. results.json and path.png are in --out (per seed:
OUT/seed-N, and OUT/seeds.json). A killed run continues with the same command (--resume is on by default;
--no-resume refuses a used folder).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from kvmesh.agents.usage import format_rows
from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.evals.seeds import seeds_table
from kvmesh.training.optima.config import OptimaConfig


def _say(line: str) -> None:
    print(f"kvmesh: {line}", file=sys.stderr, flush=True)


def _points_table(points: list[dict]) -> str:
    rows = [("point", "split", "accuracy", "95% interval", "F1", "generated/task", "prompt+completion/task")]
    for p in points:
        low, high = p["accuracy_ci95"]
        rows.append(
            (
                p["label"],
                p.get("split", "test"),
                f"{p['accuracy']:.3f}",
                f"[{low:.3f}, {high:.3f}]",
                f"{p['f1']:.3f}",
                f"{p['generated_tokens']:.1f}",
                f"{p['total_tokens']:.1f}",
            )
        )
    return "\n".join(format_rows(rows))


def _paired_lines(paired: dict) -> list[str]:
    lines = []
    for name, c in paired.items():
        diff = c["accuracy_difference"]
        low, high = diff["ci95"]
        lines.append(
            f"{name}: accuracy {diff['value']:+.3f} [{low:+.3f}, {high:+.3f}] on {c['n']} paired tasks "
            f"({c['discordant']['only_other']} only it solved, {c['discordant']['only_reference']} only the other), "
            f"McNemar p = {c['mcnemar_p']:.3g}"
        )
    return lines


def optima_train(args: argparse.Namespace) -> int:
    from kvmesh.training.optima.loop import optima_train as run  # trl/peft load only when training

    config = config_from_args(OptimaConfig, args)
    try:
        results = run(config, progress=_say)
    except KeyboardInterrupt:  # finished rollouts, adapters and scores are on disk: say how to go on
        again = shlex.join(["kvmesh", *(word for word in args.argv if word != "--no-resume")])
        print(f"\nkvmesh: interrupted: what finished is saved in {config.out}; continue with: {again}", file=sys.stderr)
        return 130
    if config.seeds:
        print("\n".join(seeds_table(results)))
        print(f"{len(config.seeds)} seeds; {config.out}/seeds.json, each seed's run in {config.out}/seed-N")
        return 0
    print(_points_table(results["points"]))
    print(f"chosen on validation: {results['chosen']}")
    if "test" in results:
        print(_points_table(results["test"]["points"]))
        print("\n".join(_paired_lines(results["test"]["paired"])))
    else:
        print("test not scored: pass --test to score the chosen iteration and both baselines on test, once")
    print(f"{config.out}/results.json, plot: {results['plot']}")
    return 0


def add_parser(commands) -> None:
    optima = commands.add_parser("optima", help="train a team to use fewer tokens (Optima: iterative SFT/DPO, LoRA)")
    kinds = optima.add_subparsers(dest="kind", required=True)
    training = kinds.add_parser("train", help="rollouts, rewards, LoRA updates and held-out scores per iteration")
    add_config_arguments(training, OptimaConfig)
    training.set_defaults(handler=optima_train)
