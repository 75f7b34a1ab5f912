"""The `text` channel: the receiver reads the sender's reply as text, prefilled with the rest of its prompt.

The baseline every other channel is measured against: the message is the receiver's own text (its header and
the reply), no cache travels, and nothing is kept or learned.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from kvmesh.kvcomm.assembly import OWN, Piece, Preparation
from kvmesh.kvcomm.channel import Endpoint, Keep, TurnView
from kvmesh.llm.base import Generation, LanguageModel
from kvmesh.llm.segment import KVSegment


class TextChannel:
    name = "text"

    def __init__(self, settings: None = None) -> None:
        pass

    def check(self, sender: Endpoint, receiver: Endpoint, where: str) -> None:
        """Any two agents can talk in text, whatever their models."""

    def prepare(self, model: LanguageModel) -> None:
        """Every model reads text."""

    def layout(
        self, model: LanguageModel, glue: str, content: str, cached: KVSegment | None, key: Hashable
    ) -> list[Piece]:
        return [Piece(own=True, text=glue + content, kind=OWN)]

    def place(self, model: LanguageModel, receiver: Hashable, pieces: Sequence[Piece]) -> Preparation:
        """Text makes no caches, so it never has pieces to place: prefill the prompt."""
        yield from ()  # a preparation that needs no rows
        return None

    def keeps(self, turn: TurnView) -> Keep:
        return Keep()

    def learn(self, turn: TurnView, generation: Generation) -> None:
        """Nothing to learn from text."""

    def stats(self) -> dict:
        return {}
