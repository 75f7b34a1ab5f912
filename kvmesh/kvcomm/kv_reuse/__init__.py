"""The `kv-reuse` channel (KVCOMM): receivers read the task and other agents' replies from caches that exist.

channel.py   KVReuseChannel: how a message is laid out over a cached reply, what turns keep and learn
engine.py    ReuseEngine and ReuseConfig: templates, the anchor test, placements (no model calls)
anchors.py   the anchor pool, and the folder that keeps pools across processes
"""

from kvmesh.kvcomm.kv_reuse.channel import KVReuseChannel
from kvmesh.kvcomm.kv_reuse.engine import ReuseConfig, ReuseEngine, ReuseStats

__all__ = ["KVReuseChannel", "ReuseConfig", "ReuseEngine", "ReuseStats"]
