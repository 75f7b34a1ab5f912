"""The `kv-select` channel (KVComm): a receiver reads its sender's prompt cache in a chosen subset of layers.

channel.py   KVSelectChannel and KVSelectConfig
layers.py    which layers read: calibration attention and the depth prior
tokens.py    token selection: the context tokens the receiver's first layer attends to most
"""

from kvmesh.kvcomm.kv_select.channel import KVSelectChannel, KVSelectConfig

__all__ = ["KVSelectChannel", "KVSelectConfig"]
