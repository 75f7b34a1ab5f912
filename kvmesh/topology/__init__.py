"""Topology designers: they learn each task's graph and prune it (presets and pictures live in `kvmesh.graph`).

Designers (`designer.compile(team, trainset, valset) -> Team`, `design(task) -> CommGraph`, save/load):
- `edge-logits` (`EdgeLogitsDesigner`): a logit per candidate edge, REINFORCE, magnitude pruning; one graph.
- `gdesigner` (`GDesigner`): a variational GNN over agents and a task node; a graph per task.
- `agp` (`AGP`): G-Designer plus agent pruning; a pruned agent makes no model call.
"""

from kvmesh.topology.agp import AGP, AGPConfig
from kvmesh.topology.designer import Designer, DesignerConfig
from kvmesh.topology.edge_logits import EdgeLogitsConfig, EdgeLogitsDesigner
from kvmesh.topology.gdesigner import GDesigner, GDesignerConfig

DESIGNERS: dict[str, type[Designer]] = {cls.kind: cls for cls in (EdgeLogitsDesigner, GDesigner, AGP)}


def load_designer(path, team=None) -> Designer:
    """A saved designer (`designer.save(path)`), bound to `team` or to the team saved with it."""
    return Designer.load(path, team, DESIGNERS)


__all__ = [
    "AGP",
    "DESIGNERS",
    "AGPConfig",
    "Designer",
    "DesignerConfig",
    "EdgeLogitsConfig",
    "EdgeLogitsDesigner",
    "GDesigner",
    "GDesignerConfig",
    "load_designer",
]
