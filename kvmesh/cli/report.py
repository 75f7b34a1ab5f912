"""`kvmesh report RUN [RUN ...]`: finished evaluation runs side by side (`kvmesh.evals.report`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.evals.report import compare_table


@dataclass
class ReportConfig:
    """What `kvmesh report` prints.

    Args:
        runs: run folders holding summary.json.
    """

    runs: list[str]


def report(args: argparse.Namespace) -> int:
    print(compare_table(config_from_args(ReportConfig, args).runs))
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("report", help="print finished evaluation runs side by side")
    add_config_arguments(parser, ReportConfig, positional={"runs": "+"})
    parser.set_defaults(handler=report)
