"""Token streaming: pieces settle only when no later token can change them, and always join into the reply."""

import pytest

from kvmesh.llm.base import Generation, GenerationRequest, stream_request
from kvmesh.llm.streaming import TextStream, settled


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("Hello wor", (), 9),
        ("Hello\nUs", ("\nUser:",), 5),  # "\nUs" could still become the stop string
        ("Hello\nUx", ("\nUser:",), 8),
        ("caf\ufffd", (), 3),  # a character whose last byte has not arrived
        ("xab", ("b!", "abc"), 1),  # the longest ending that begins a stop string is held
    ],
)
def test_settled_holds_back_what_a_later_token_can_change(text, stops, expected):
    assert settled(text, stops) == expected


def test_pieces_join_into_the_final_text():
    pieces = []
    stream = TextStream(pieces.append, ("\nUser:",))
    for text in ["He", "Hello", "Hello\n", "Hello\nUs", "Hello\nUser:"]:
        stream.update(text)
    stream.finish("Hello")
    assert pieces == ["He", "llo"]


def test_a_streamed_row_yields_its_pieces_then_the_same_generation(tiny):
    (prompt,) = tiny.requests(["Once upon a time"], max_new_tokens=12)
    (plain,) = tiny.generate_requests([GenerationRequest(prompt.prompt_ids, 12)])
    items = list(stream_request(tiny, prompt))
    *pieces, generation = items
    assert isinstance(generation, Generation) and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == generation.text == plain.text and generation.token_ids == plain.token_ids
    assert len(pieces) > 1


def test_rows_stream_while_others_in_the_batch_do_not(tiny):
    first, second = tiny.requests(["Once upon a time", "The answer is"], max_new_tokens=6)
    pieces = []
    first.on_text = pieces.append
    batch = tiny.new_batch()
    batch.submit(first, "a")
    batch.submit(second, "b")
    done = {}
    while batch.has_work:
        done.update(batch.step())
    assert "".join(pieces) == done["a"].text and done["b"].text
