"""Channels: how messages travel between agents, as text or through KV caches (see `kvmesh.kvcomm.channel`).

`text` (`text.py`) and `kv-reuse` (KVCOMM: `kv_reuse.py`, its engine `reuse_engine.py`, `anchors.py`,
`rope.py`) run today; `kv-select` and `c2c` are named and refuse until they land. `assembly.py` builds a
receiver's cache from pieces, whichever channel supplies them.
"""

from kvmesh.kvcomm.assembly import Assembly, Piece
from kvmesh.kvcomm.channel import (
    Channel,
    ChannelNotAvailableError,
    available_channels,
    channel_names,
    make_channel,
    register_channel,
)
from kvmesh.kvcomm.reuse_engine import ReuseConfig, ReuseEngine, ReuseStats
from kvmesh.kvcomm.rope import Rope, UnsupportedModelError

__all__ = [
    "Assembly",
    "Channel",
    "ChannelNotAvailableError",
    "Piece",
    "ReuseConfig",
    "ReuseEngine",
    "ReuseStats",
    "Rope",
    "UnsupportedModelError",
    "available_channels",
    "channel_names",
    "make_channel",
    "register_channel",
]
