"""Aligning Gemma 3's and SmolLM2's tokenizations of one text by character offsets."""

import pytest
import torch
from transformers import AutoTokenizer

from kvmesh.kvcomm.c2c.align import AlignmentError, align_spans, align_tokens, cover_index, encode_with_offsets
from kvmesh.llm.registry import resolve


@pytest.fixture(scope="module")
def smol_tokenizer():
    return AutoTokenizer.from_pretrained(resolve("smollm2-135m"))


def _pieces(alignment, text):
    """(receiver piece, sender piece it reads) for every receiver token."""
    return [
        (text[slice(*alignment.receiver_spans[r])], text[slice(*alignment.sender_spans[s])])
        for r, s in enumerate(alignment.receiver_to_sender)
    ]


def test_both_sides_start_with_their_bos_and_the_sinks_align(gemma_tokenizer, smol_tokenizer):
    alignment = align_tokens("Mira's brother is Tavo.", gemma_tokenizer, smol_tokenizer)
    assert alignment.sender_ids[0] == gemma_tokenizer.bos_token_id  # added by the tokenizer itself
    assert alignment.receiver_ids[0] == smol_tokenizer.bos_token_id  # <|im_start|>, written in front
    assert alignment.receiver_to_sender[0] == 0 and alignment.sender_to_receiver[0] == 0
    assert encode_with_offsets(smol_tokenizer, "Mira", bos=False)[0] == smol_tokenizer("Mira")["input_ids"]


def test_names_with_apostrophes_read_the_token_holding_their_last_character(gemma_tokenizer, smol_tokenizer):
    text = "Mira's brother is Tavo."
    alignment = align_tokens(text, gemma_tokenizer, smol_tokenizer)
    pieces = _pieces(alignment, text)[1:]
    # SmolLM2: M|ira|'s|_brother|...; Gemma 3: Mira|'|s|_brother|_is|_T|avo|.
    assert pieces[:4] == [("M", "Mira"), ("ira", "Mira"), ("'s", "s"), (" brother", " brother")]
    assert ("o", "avo") in pieces and ("av", "avo") in pieces
    # the converse: each sender token reads the receiver token holding its last character
    sender_pieces = [text[slice(*alignment.receiver_spans[r])] for r in alignment.sender_to_receiver[1:4]]
    assert sender_pieces == ["ira", "'s", "'s"]


def test_numbers_spaces_and_unicode(gemma_tokenizer, smol_tokenizer):
    text = "I have 12345 apples and 3.14  pi. Café 日本語 🙂"
    alignment = align_tokens(text, gemma_tokenizer, smol_tokenizer)
    for r, s in enumerate(alignment.receiver_to_sender[1:], start=1):
        lo, hi = alignment.receiver_spans[r]
        a, b = alignment.sender_spans[s]
        assert a <= hi - 1 < b, (text[lo:hi], text[a:b])  # every character here is covered on both sides
    pieces = dict(_pieces(alignment, text)[1:])
    assert pieces["3"] == "3" and pieces[" apples"] == " apples"
    # byte-level pieces of one character (SmolLM2 splits 日 into three) all read Gemma 3's token holding it
    japanese = [
        s for r, s in enumerate(alignment.receiver_to_sender) if alignment.receiver_spans[r][1] == text.index("日") + 1
    ]
    assert len(japanese) > 1 and len(set(japanese)) == 1


def test_mean_pooling_averages_the_overlapping_sender_tokens(gemma_tokenizer, smol_tokenizer):
    text = "Mira's brother"
    alignment = align_tokens(text, gemma_tokenizer, smol_tokenizer)
    rows = torch.arange(len(alignment.sender_ids), dtype=torch.float32)[:, None].repeat(1, 3)
    last, mean = alignment.gather(rows, "last"), alignment.gather(rows, "mean")
    assert last.shape == mean.shape == (len(alignment.receiver_ids), 3)
    # receiver "'s" overlaps sender "'" (1 + 1) and "s" (2 + 1): mean 2.5, last 3
    r = [text[slice(*span)] for span in alignment.receiver_spans].index("'s")
    assert float(last[r, 0]) == 3.0 and float(mean[r, 0]) == 2.5
    assert torch.equal(mean[0], rows[0])  # the sink reads the sink


def test_dropped_characters_and_missing_specials():
    # the sender dropped characters 3..5 (a normaliser ate them): read its last token before them
    assert cover_index([(0, 3), (3, 5), (5, 8)], [(0, 3), (5, 8)]) == [0, 0, 1]
    # a dropped leading character reads the sender's first token
    assert cover_index([(0, 1), (1, 4)], [(1, 4)]) == [0, 0]
    # specials pair in order; a side without one has no counterpart
    assert cover_index([(0, 0), (0, 0), (0, 2)], [(0, 0), (0, 2)]) == [0, 0, 1]
    alignment = align_spans("ab", ([5], [(0, 2)]), ([1, 7], [(0, 0), (0, 2)]))
    assert alignment.receiver_to_sender == (-1, 0)
    with pytest.raises(AlignmentError, match="no sender token"):
        alignment.gather(torch.zeros(1, 2))
    sender, receiver = alignment.sender_pairs()
    assert sender.tolist() == [0] and receiver.tolist() == [1]
    with pytest.raises(AlignmentError, match="pooling"):
        align_spans("ab", ([5], [(0, 2)]), ([7], [(0, 2)])).gather(torch.zeros(1, 2), "max")
