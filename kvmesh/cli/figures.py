"""`kvmesh figures [--check]`: the README's figure tables rebuilt from `results/` (`kvmesh.evals.results`).

Without `--check` it rewrites the README in place (atomically) and says which blocks changed; with `--check`
(`make figures-check`, run by `make test`) it changes nothing and exits 1 when a block differs from its result
file. Result files that no block shows are listed, as a note only.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.evals.results import FiguresError, check_readme, render_readme, unused_results
from kvmesh.runs import write_atomic


@dataclass
class FiguresConfig:
    """What `kvmesh figures` rebuilds or checks.

    Args:
        check: change nothing; exit 1 when a figure block differs from its result file.
        readme: the markdown file holding `<!-- figures:NAME -->` blocks.
        results: the folder of result files (NAME.json).
    """

    check: bool = False
    readme: str = "README.md"
    results: str = "results"


def figures(args: argparse.Namespace) -> int:
    config = config_from_args(FiguresConfig, args)
    readme, results = Path(config.readme), Path(config.results)
    if not readme.is_file():
        raise FileNotFoundError(f"{readme} does not exist; give the README to rebuild with --readme")
    try:
        stale = check_readme(readme, results)
        unused = unused_results(readme, results)
        if stale and not config.check:
            text = render_readme(readme.read_text(encoding="utf-8"), results)
            write_atomic(readme, lambda file: file.write(text.encode("utf-8")))
    except FiguresError as error:  # its line numbers are the README's
        raise FiguresError(f"{readme}: {error}") from None
    for path in unused:
        print(f"note: no block of {readme} shows {path}")
    if config.check and stale:
        print(
            f"kvmesh: {readme} is out of date with {results}/: block(s) {', '.join(stale)} differ from their "
            "result files; run `make figures` (kvmesh figures) to rebuild them, and never edit a figure by hand",
            file=sys.stderr,
        )
        return 1
    if config.check:
        print(f"{readme}: the figure blocks match {results}/")
    elif stale:
        print(f"{readme}: rebuilt block(s) {', '.join(stale)} from {results}/")
    else:
        print(f"{readme}: the figure blocks already match {results}/")
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("figures", help="rebuild (or --check) the README's figure tables from results/")
    add_config_arguments(parser, FiguresConfig)
    parser.set_defaults(handler=figures)
