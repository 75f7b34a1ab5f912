"""Channels: how messages travel between agents, as text or through KV caches (see `kvmesh.kvcomm.channel`).

A channel is one module or one folder on the `Channel` base class; nothing outside it names the channel:

    text.py      text: the receiver reads the reply as text (the baseline)
    kv_reuse/    kv-reuse (KVCOMM): the task and replies read from caches that exist, corrected by anchors
    kv_select/   kv-select (KVComm): the sender's prompt cache read in a chosen share of the layers
    c2c/         c2c (C2C): a sender's cache on another model, mapped into the receiver's format

What channels share stays here: `channel.py` (the contract and the registry), `assembly.py` (a receiver's
prompt as pieces and its cache built from them), `latent.py` (a context read in front of the prompt) and
`rope.py` (moving cached keys between positions).
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
from kvmesh.kvcomm.kv_reuse.engine import ReuseConfig, ReuseEngine, ReuseStats
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
