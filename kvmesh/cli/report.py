"""`kvmesh report RUN [RUN ...]`: finished evaluation runs side by side, then paired (`kvmesh.evals.report`).

kvmesh report runs/complete runs/agp         # the first run is the reference of the paired comparison

The side-by-side table shows each run's metrics with its own 95% intervals. With two or more runs, each later
run is then paired with the first on the task ids both hold (`kvmesh.evals.paired`): accuracy difference with
an exact McNemar p-value, paired bootstrap intervals for tokens and seconds per task. Runs that share no task
id are refused.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.evals.report import compare_report


@dataclass
class ReportConfig:
    """What `kvmesh report` prints.

    Args:
        runs: run folders holding summary.json; with two or more, each is also paired with the first on their
            shared task ids.
        seed: seed of the paired bootstrap intervals (the same runs and seed print the same intervals).
    """

    runs: list[str]
    seed: int = 0


def report(args: argparse.Namespace) -> int:
    config = config_from_args(ReportConfig, args)
    print(compare_report(config.runs, config.seed))
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report", help="print finished evaluation runs side by side, and paired with the first"
    )
    add_config_arguments(parser, ReportConfig, positional={"runs": "+"})
    parser.set_defaults(handler=report)
