"""Loading what a command names: a team spec that may bring a saved designer, and a designer's folder.

A spec naming a designer needs `kvmesh.topology` to load it, which lives above `kvmesh.agents`; this module sits
above both and passes the loader in.
"""

from __future__ import annotations

from pathlib import Path

from kvmesh.agents.team import Team
from kvmesh.topology import load_designer
from kvmesh.topology.designer import DESIGNER_FILE


def load_team(source: str | Path | dict) -> Team:
    """`Team.from_spec(source)`, loading the designer it names (if any)."""
    return Team.from_spec(source, designer_loader=load_designer)


def designer_folder(path: str | Path) -> Path:
    """A saved designer, given as its own folder or as the training folder holding `designer/`."""
    folder = Path(path)
    if (folder / "designer" / DESIGNER_FILE).is_file():
        return folder / "designer"
    if (folder / DESIGNER_FILE).is_file():
        return folder
    raise FileNotFoundError(f"{path} holds no saved designer; train one with `kvmesh design train`")
