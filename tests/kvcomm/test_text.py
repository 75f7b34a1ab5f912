"""The text channel: a message is the receiver's own text; nothing is cached, kept or learned."""

from kvmesh.kvcomm.channel import Keep, TurnView, make_channel
from kvmesh.kvcomm.text import TextChannel


def test_a_message_is_own_text_and_nothing_is_kept(tiny):
    channel = make_channel("text")
    assert isinstance(channel, TextChannel)
    (piece,) = channel.layout(tiny, "\n\nMessage from a (this round):\n", "It is 5.", None, ("reply", "a", "spatial"))
    assert piece.own and piece.source is None and piece.text == "\n\nMessage from a (this round):\nIt is 5."
    view = TurnView(("b", 0), tiny, [piece], (0, 1), False, frozenset({"text"}), {})
    assert channel.keeps(view) == Keep() and channel.stats() == {}
    channel.check(object(), object(), "any edge")  # any two agents can talk in text
    assert channel.place(tiny, ("b", 0), [piece]) is None  # nothing to place: the prompt is prefilled
