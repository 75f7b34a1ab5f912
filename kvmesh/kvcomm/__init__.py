"""KV-cache communication between agents: cache toolkit and the kv-reuse, kv-select and c2c channels."""

from kvmesh.kvcomm.reuse import Assembly, Piece, ReuseConfig, ReuseEngine, ReuseStats
from kvmesh.kvcomm.rope import Rope, UnsupportedModelError
from kvmesh.kvcomm.segment import KVSegment

__all__ = [
    "Assembly",
    "KVSegment",
    "Piece",
    "ReuseConfig",
    "ReuseEngine",
    "ReuseStats",
    "Rope",
    "UnsupportedModelError",
]
