"""Loading what a command names: a team spec that may bring a saved designer, a designer's folder, and the
designers of a `kvmesh design train --seeds` folder (one per seed, in `seed-N`).

A spec naming a designer needs `kvmesh.topology` to load it, which lives above `kvmesh.agents`; this module sits
above both and passes the loader in.
"""

from __future__ import annotations

import json
from pathlib import Path

from kvmesh.agents.team import Team
from kvmesh.evals.seeds import SEEDS_FILE, seed_folder
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


def seed_designer_folders(path: str | Path) -> dict[int, Path]:
    """The saved designer of each seed of a finished `kvmesh design train --seeds` folder, by seed (its
    seeds.json lists them); {} when `path` holds no seed folders. A folder whose seeds have not all finished is
    refused, so that no comparison silently runs on fewer seeds than were asked for."""
    folder = Path(path)
    if not (folder / SEEDS_FILE).is_file():
        if any(child.is_dir() for child in folder.glob("seed-*")):
            raise FileNotFoundError(
                f"{path} holds seed-N folders but no {SEEDS_FILE}: its `kvmesh design train --seeds` run has not "
                "finished; run that command again with --resume"
            )
        return {}
    seeds = json.loads((folder / SEEDS_FILE).read_text()).get("seeds", [])
    return {seed: designer_folder(seed_folder(folder, seed)) for seed in seeds}
