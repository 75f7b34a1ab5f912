"""Topologies: named presets now; learned designers and drawing come next."""

from kvmesh.topology.presets import PRESETS, build_preset

__all__ = ["PRESETS", "build_preset"]
