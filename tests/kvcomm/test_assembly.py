"""Cache assembly from pieces: placed pieces written in place, own text prefilled by rows over what precedes it."""

import pytest
import torch

from kvmesh.kvcomm.assembly import Assembly, Piece, assemble, run_preparation
from kvmesh.llm.base import GenerationRequest


def ids(tiny, text):
    return tuple(tiny.encode_prompt(text))


def dense(tiny, tokens):
    (row,) = tiny.generate_requests([GenerationRequest(list(tokens), max_new_tokens=0, keep_kv=True)])
    return row.prompt_kv


def copy_of(segment):
    def place(keys, values, position):
        keys.copy_(segment.keys)
        values.copy_(segment.values)

    return place


@pytest.fixture
def prompt(tiny):
    return [
        ids(tiny, "You are the reader of the notes."),
        ids(tiny, " My notes say the fox is red."),
        ids(tiny, " Where is the fox?"),
        ids(tiny, " Also: it sleeps."),
        ids(tiny, " Answer:"),
    ]


def test_own_text_between_placed_pieces_is_prefilled_in_place_exactly(tiny, prompt):
    head, notes, task, more, tail = prompt
    full = dense(tiny, head + notes + task + more + tail)
    at = [0, len(head), len(head + notes), len(head + notes + task), len(head + notes + task + more)]
    pieces = [Piece(head), Piece(notes, own=True), Piece(task, key="task"), Piece(more, own=True), Piece(tail)]
    placements = [copy_of(full.slice(at[0], at[1])), None, copy_of(full.slice(at[2], at[3])), None, None]
    preparation = assemble(pieces, placements, full, spare=4)
    rows = [next(preparation)]  # one prefill-only row per run of own text, each over what precedes it
    assert rows[0][0].prefill_only and rows[0][0].prefix.length == len(head)
    rows.append(preparation.send(tiny.generate_requests(rows[0])))
    assert rows[1][0].prefix.length == at[3] and rows[1][0].prompt_ids == list(head + notes + task + more)
    with pytest.raises(StopIteration) as done:
        preparation.send(tiny.generate_requests(rows[1]))
    assembly = done.value.value
    assert assembly.rest == list(tail) and assembly.reused_tokens == len(head) + len(task)
    expected = full.slice(0, at[4])
    torch.testing.assert_close(assembly.prefix.keys, expected.keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(assembly.prefix.values, expected.values, atol=1e-5, rtol=1e-5)
    assert assembly.keys.shape[2] == len(head + notes + task + more + tail) + 4  # room for the tail and spare


def test_a_prefix_of_one_segment_and_bad_layouts(tiny, prompt):
    head, notes, *_ = prompt
    segment = dense(tiny, head)
    prefix = Assembly.of(segment, notes, spare=2)
    assert prefix.length == len(head) and prefix.rest == list(notes) and prefix.keys.shape[2] == len(head + notes) + 2
    (row,) = tiny.generate_requests([GenerationRequest(list(head + notes), 3, prefix=prefix)])
    (plain,) = tiny.generate_requests([GenerationRequest(list(head + notes), 3)])
    assert row.token_ids == plain.token_ids
    with pytest.raises(ValueError, match="first piece must be placed"):
        run_preparation(assemble([Piece(head, own=True), Piece(notes)], [None, None], segment), tiny)
    with pytest.raises(ValueError, match="starts at position 0"):
        Assembly.of(segment.slice(1), notes)
    with pytest.raises(ValueError, match="at least one token"):
        Piece()
