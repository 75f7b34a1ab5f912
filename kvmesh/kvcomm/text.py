"""The `text` channel: the receiver reads the sender's reply as text, prefilled with the rest of its prompt.

The baseline every other channel is measured against: the message is the receiver's own text (its header and
the reply), no cache travels, and nothing is kept or learned. Every hook is `Channel`'s default, which is
exactly this behaviour; any two agents can talk in text, whatever their models.
"""

from __future__ import annotations

from kvmesh.kvcomm.channel import Channel


class TextChannel(Channel):
    name = "text"
    summary = "the sender's reply, read as text"
