"""`kvmesh` command line: one module per command, each command's flags generated from its config dataclass.

kvmesh run "What is 17 * 3?" --topology chain --agents 3 --rounds 1 --decision decision    (run.py)
kvmesh eval infoqa --topology chain --agents 3 --limit 200 --out runs/chain                (evaluate.py)
kvmesh report runs/single runs/chain                                                      (report.py)
kvmesh figures --check                                                                    (figures.py)
kvmesh viz runs/chain -o chain.svg                                                        (viz.py)
kvmesh design train infoqa --designer agp --out runs/design/agp                           (design.py)
kvmesh bench kv-reuse                                                                     (bench.py)
kvmesh models                                                                             (models.py)
kvmesh optima train --task infoqa --method sft --iterations 2 --out runs/optima           (optima.py)
kvmesh demo                                                                               (demo.py)
kvmesh serve --model smollm2-135m --port 8000                                             (serve.py)

Errors a user can fix (bad input, missing models or data, refused permissions) exit 2 with one line that says
what was wrong; config errors name their flags.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kvmesh.cli import bench, c2c, demo, design, evaluate, figures, models, optima, report, run, serve, viz
from kvmesh.cli.flags import given_options, show_config_error
from kvmesh.config import ConfigError
from kvmesh.llm.registry import ModelNotAvailableError

COMMANDS = (run, evaluate, viz, report, figures, bench, design, models, demo, c2c, optima, serve)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmesh", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def configure_logging() -> None:
    """kvmesh's own messages go to stderr as `kvmesh: ...`; transformers' per-load progress bars are noise here.

    Only the `kvmesh` logger gets a handler: a root handler would print again every line of the libraries that
    bring their own (huggingface_hub does), once raw and once prefixed."""
    ours = logging.getLogger("kvmesh")
    if not any(getattr(h, "kvmesh_cli", False) for h in ours.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("kvmesh: %(message)s"))
        handler.kvmesh_cli = True  # type: ignore[attr-defined]
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    args.given = given_options(parser, argv)  # what the user set, so commands can refuse flags they would ignore
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to print the command that resumes a run
    configure_logging()
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # commands that keep results say what is saved themselves
        print("\nkvmesh: interrupted", file=sys.stderr)
        return 130
    except ConfigError as error:
        print(f"kvmesh: error: {show_config_error(error)}", file=sys.stderr)
        return 2
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        PermissionError,
        ModelNotAvailableError,
        NotImplementedError,
        FileExistsError,
        RuntimeError,
    ) as error:
        print(f"kvmesh: error: {error}", file=sys.stderr)
        return 2
