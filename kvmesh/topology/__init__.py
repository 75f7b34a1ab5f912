"""Topology designers: they learn each task's graph and prune it (presets and pictures live in `kvmesh.graph`).

Designers (`designer.compile(team, trainset, valset) -> Team`, `design(task) -> CommGraph`, save/load):
- `edge-logits` (`EdgeLogitsDesigner`): a logit per candidate edge, REINFORCE, magnitude pruning; one graph.
- `gdesigner` (`GDesigner`): a variational GNN over agents and a task node; a graph per task.
- `agp` (`AGP`): G-Designer plus agent pruning; a pruned agent makes no model call.

`DESIGNERS` (a `kvmesh.plugins.Registry`) names each kind's class: a saved designer is loaded by its kind, and
other packages add kinds as `kvmesh.designers` entry points (or `DESIGNERS.register(kind, cls)` from code).
"""

from kvmesh.topology.agp import AGP, AGPConfig
from kvmesh.topology.designer import DESIGNERS, Designer, DesignerConfig, DesignerNotAvailableError
from kvmesh.topology.edge_logits import EdgeLogitsConfig, EdgeLogitsDesigner
from kvmesh.topology.gdesigner import GDesigner, GDesignerConfig


def load_designer(path, team=None) -> Designer:
    """A saved designer (`designer.save(path)`), bound to `team` or to the team saved with it; its saved kind
    names its class in `DESIGNERS`."""
    return Designer.load(path, team)


__all__ = [
    "AGP",
    "DESIGNERS",
    "AGPConfig",
    "Designer",
    "DesignerConfig",
    "DesignerNotAvailableError",
    "EdgeLogitsConfig",
    "EdgeLogitsDesigner",
    "GDesigner",
    "GDesignerConfig",
    "load_designer",
]
