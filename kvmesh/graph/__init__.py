"""Communication graphs: who talks to whom, over which channel; presets; pictures and exports."""

from kvmesh.graph.edge import DECISION, EDGE_KINDS, SPATIAL, TEMPORAL, Edge, GraphError, edge_key
from kvmesh.graph.graph import CommGraph
from kvmesh.graph.presets import PRESETS, build_preset

__all__ = [
    "DECISION",
    "EDGE_KINDS",
    "PRESETS",
    "SPATIAL",
    "TEMPORAL",
    "CommGraph",
    "Edge",
    "GraphError",
    "build_preset",
    "edge_key",
]
