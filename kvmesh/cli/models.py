"""`kvmesh models`: the model aliases, whether their packages are installed and converted, and how to install."""

from __future__ import annotations

import argparse

from kvmesh.llm.registry import ALIASES, cache_dir, is_converted, is_installed


def models(args: argparse.Namespace) -> int:
    rows = [("alias", "installed", "converted", "description")]
    for name, alias in ALIASES.items():
        rows.append(
            (name, "yes" if is_installed(name) else "no", "yes" if is_converted(name) else "no", alias.description)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    for alias in (a for a in ALIASES.values() if not is_installed(a.name)):
        print(f"\nto install {alias.name}: {alias.install_hint}")
    print(f"\nconverted models live in {cache_dir() / 'models'} (set KVMESH_CACHE to move them)")
    return 0


def add_parser(commands) -> None:
    commands.add_parser("models", help="list model aliases and whether they are ready").set_defaults(handler=models)
