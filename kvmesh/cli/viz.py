"""`kvmesh viz SOURCE -o FILE`: a graph JSON file or a run folder as a picture, or a run as one HTML page.

kvmesh viz runs/infoqa-chain -o chain.svg        # the run's graph with mean tokens per edge; .png .mmd .dot too
kvmesh viz runs/infoqa-chain -o report.html      # one offline page: graph, tokens per agent and edge, transcripts
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.evals.figures import read_picture_source
from kvmesh.evals.report import write_report
from kvmesh.graph.draw import write_picture


@dataclass
class VizConfig:
    """What `kvmesh viz` draws.

    Args:
        source: a graph JSON file (CommGraph.to_json) or a run folder from kvmesh eval.
        output: output file: .png, .svg, .mmd (Mermaid), .dot, or .html (a report page).
    """

    source: str
    output: str = field(metadata={"short": "-o"})


def viz(args: argparse.Namespace) -> int:
    config = config_from_args(VizConfig, args)
    if config.output.lower().endswith(".html"):
        print(f"wrote {write_report(config.source, config.output)}")
        return 0
    graph, options = read_picture_source(config.source)
    print(f"wrote {write_picture(graph, config.output, **options)}")
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("viz", help="draw a graph JSON file or an evaluation run (picture or HTML report)")
    add_config_arguments(parser, VizConfig, positional={"source": None})
    parser.set_defaults(handler=viz)
