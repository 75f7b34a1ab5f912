"""Token streaming: a row's reply handed out piece by piece as it is decoded.

A row whose `GenerationRequest.on_text` is set gets each new piece of its reply's text after every decode step
that adds some. Two things are held back until they are settled:

    a stop string's beginning   text at the end that could still grow into one of the row's stop strings
                                (which would cut it from the reply)
    a partial character         a multi-byte character split across tokens decodes as U+FFFD until its last
                                byte arrives

When the row ends, whatever is left of its final text (cut before a stop string) is handed out, so the pieces
always join into exactly `Generation.text`. The callback runs inside `RunningBatch.step()`, on the thread that
steps the batch; it should be quick (append to a list, put on a queue).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

TextCallback = Callable[[str], None]
REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to


def settled(text: str, stops: Sequence[str]) -> int:
    """How many leading characters of `text` no later token can change: the text before a stop string it holds,
    else the text minus a trailing partial character and minus the longest ending that begins a stop string."""
    end = len(text.rstrip(REPLACEMENT))
    found = [text.find(stop) for stop in stops if stop in text]
    if found:  # a whole stop string: the reply ends before it
        return min(min(found), end)
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, end), held, -1):  # the longest proper prefix of `stop` ending here
            if text[end - size : end] == stop[:size]:
                held = size
                break
    return end - held


class TextStream:
    """The pieces of one row's reply: `update` with the text decoded so far, `finish` with the final text."""

    def __init__(self, callback: TextCallback, stops: Sequence[str] = ()) -> None:
        self.callback, self.stops, self.sent = callback, tuple(stops), 0

    def update(self, text: str) -> None:
        self._send(text, settled(text, self.stops))

    def finish(self, text: str) -> None:
        self._send(text, len(text))

    def _send(self, text: str, end: int) -> None:
        if end > self.sent:
            piece, self.sent = text[self.sent : end], end
            self.callback(piece)
