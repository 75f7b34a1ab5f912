"""Topologies: named presets, pictures and text exports (`draw.py`); learned designers come next."""

from kvmesh.topology.draw import draw, to_dot, to_mermaid
from kvmesh.topology.presets import PRESETS, build_preset

__all__ = ["PRESETS", "build_preset", "draw", "to_dot", "to_mermaid"]
