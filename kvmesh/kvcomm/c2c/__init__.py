"""The `c2c` channel (C2C): a receiver reads a sender on another model through the sender's cache, mapped.

channel.py      C2CChannel and C2CConfig: context transfer, or fusion over the task's text
task_fusion.py  fusion mode: the receiver's task rows fused with the sender's, aligned by characters
align.py        token alignment across two tokenizers by character offsets
capture.py      position-free caches of a text (what mappers are fitted on), the sliding-window limit
mappers/        the mappers themselves: folders and the base class, ridge, the trained fuser, quality
"""

from kvmesh.kvcomm.c2c.channel import C2CChannel, C2CConfig

__all__ = ["C2CChannel", "C2CConfig"]
