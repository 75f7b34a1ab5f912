"""`kvmesh optima train`: Optima's iterative SFT/DPO with LoRA on a team (`kvmesh.training.optima`).

kvmesh optima train --task infoqa --model smollm2-135m --method sft --iterations 2 --out runs/optima

Prints each step as it finishes and, at the end, every point of the path (iteration 0, the prompt-only compact
baseline, each iteration) with accuracy, F1 and tokens per task; results.json and path.png are in --out. A
killed run continues with the same command (--resume is on by default; --no-resume refuses a used folder).
"""

from __future__ import annotations

import argparse
import sys

from kvmesh.agents.usage import format_rows
from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.training.optima.config import OptimaConfig


def _say(line: str) -> None:
    print(f"kvmesh: {line}", file=sys.stderr, flush=True)


def optima_train(args: argparse.Namespace) -> int:
    from kvmesh.training.optima.loop import optima_train as run  # trl/peft load only when training

    config = config_from_args(OptimaConfig, args)
    results = run(config, progress=_say)
    rows = [("point", "accuracy", "95% interval", "F1", "generated/task", "prompt+completion/task")]
    for p in results["points"]:
        low, high = p["accuracy_ci95"]
        rows.append(
            (
                p["label"],
                f"{p['accuracy']:.3f}",
                f"[{low:.3f}, {high:.3f}]",
                f"{p['f1']:.3f}",
                f"{p['generated_tokens']:.1f}",
                f"{p['total_tokens']:.1f}",
            )
        )
    print("\n".join(format_rows(rows)))
    print(f"{results['points'][0]['tasks']} test tasks; {config.out}/results.json, plot: {results['plot']}")
    return 0


def add_parser(commands) -> None:
    optima = commands.add_parser("optima", help="train a team to use fewer tokens (Optima: iterative SFT/DPO, LoRA)")
    kinds = optima.add_subparsers(dest="kind", required=True)
    training = kinds.add_parser("train", help="rollouts, rewards, LoRA updates and held-out scores per iteration")
    add_config_arguments(training, OptimaConfig)
    training.set_defaults(handler=optima_train)
