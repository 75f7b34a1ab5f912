"""Aligning two tokenizations of the same text by character offsets, for caches of different models.

    alignment = align_tokens(text, sender_tokenizer, receiver_tokenizer)
    alignment.receiver_to_sender    # (Sr,) for each receiver token, the sender token covering its last character
    alignment.sender_to_receiver    # (Ss,) for each sender token, the receiver token covering its last character
    rows = alignment.gather(sender_rows, pooling="last")   # (..., Ss, D) -> (..., Sr, D), one sender row per
                                                            # receiver token ("mean": mean of the overlapping ones)

Two models that read the same text split it differently ("Mira's" is `Mira|'|s` for Gemma 3 and `M|ira|'s` for
SmolLM2). Fast tokenizers give each token its character span, so a token of one side is matched to the token
of the other side that holds its last character: the one whose representation has read the whole of it. That
is cleaner than C2C's decode-and-re-encode, which keeps one token of a lossy round trip.

Rules, in order, for a token whose last character is `c`:
- special tokens (an empty span, BOS): the k-th special token of one side goes to the k-th of the other (the
  other's last one when it has fewer, none when it has none);
- the other side's token whose span holds `c` (byte-level tokens may share a character: the last such token);
- a character the other side dropped (no span holds it): its last token ending at or before `c`, else its first
  token (a dropped leading character);
- no token at all on the other side: -1 (`gather` refuses it; callers drop those rows).

`encode_with_offsets(tokenizer, text, bos=True)` gives the ids a model reads for `text`, starting with the
tokenizer's BOS token: added by the tokenizer when it adds one (Gemma 3), else written in front of it when it
names one (SmolLM2's `<|im_start|>`), so both caches start with an attention sink and the sinks align.

Caveat: needs fast tokenizers (`return_offsets_mapping`); a slow tokenizer is refused with `AlignmentError`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import torch

POOLINGS = ("last", "mean")
Span = tuple[int, int]


class AlignmentError(ValueError):
    """Two tokenizations cannot be aligned (a slow tokenizer, a token with no counterpart); says how to fix it."""


def encode_with_offsets(tokenizer, text: str, bos: bool = True) -> tuple[list[int], list[Span]]:
    """Token ids of `text` and each token's character span; special tokens get the empty span (0, 0).

    With `bos`, the ids start with the tokenizer's BOS token (see the module docstring); without, no special
    tokens are added at all.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise AlignmentError(
            f"{type(tokenizer).__name__} is not a fast tokenizer, so it gives no character offsets; "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    encoded = tokenizer(text, add_special_tokens=bos, return_offsets_mapping=True)
    ids, spans = list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]
    special = set(tokenizer.all_special_ids)
    first = next((i for i, token in enumerate(ids) if token not in special or spans[i] != (0, 0)), len(ids))
    trailing = len(ids)
    while trailing > first and ids[trailing - 1] in special and spans[trailing - 1] == (0, 0):
        trailing -= 1  # EOS a tokenizer appends: the sender's context does not end its document
    ids, spans = ids[:trailing], spans[:trailing]
    if bos and first == 0 and tokenizer.bos_token_id is not None:
        ids, spans = [tokenizer.bos_token_id, *ids], [(0, 0), *spans]
    return ids, spans


def _is_special(span: Span) -> bool:
    return span[0] >= span[1]


def cover_index(targets: Sequence[Span], sources: Sequence[Span]) -> list[int]:
    """For each target span, the index of the source span covering its last character (rules: module docstring).

    Spans are (start, end) character offsets, end exclusive; an empty span is a special token. Returns -1 where
    the source side has no counterpart.
    """
    source_specials = [i for i, span in enumerate(sources) if _is_special(span)]
    real = [(span, i) for i, span in enumerate(sources) if not _is_special(span)]
    real.sort(key=lambda item: (item[0][1], item[1]))  # by end, so "last ending at or before c" is a bisect
    ends = [span[1] for span, _ in real]
    index, specials_seen = [], 0
    for span in targets:
        if _is_special(span):
            if source_specials:
                index.append(source_specials[min(specials_seen, len(source_specials) - 1)])
            else:
                index.append(-1)
            specials_seen += 1
            continue
        last = span[1] - 1
        covering = [i for (lo, hi), i in real if lo <= last < hi]
        if covering:
            index.append(max(covering))
            continue
        before = bisect_right(ends, last + 1)  # sources ending at or before c + 1 end before or at c
        if before:
            index.append(real[before - 1][1])
        elif real:
            index.append(min(i for _, i in real))
        else:
            index.append(-1)
    return index


def overlap_groups(targets: Sequence[Span], sources: Sequence[Span], fallback: Sequence[int]) -> list[tuple[int, ...]]:
    """For each target span, the source tokens sharing at least one character with it (`fallback[t]` alone
    when none does, or for special tokens)."""
    groups = []
    for t, (lo, hi) in enumerate(targets):
        found = () if _is_special((lo, hi)) else tuple(i for i, (a, b) in enumerate(sources) if a < hi and lo < b)
        groups.append(found or ((fallback[t],) if fallback[t] >= 0 else ()))
    return groups


@dataclass(frozen=True)
class Alignment:
    """Two tokenizations of one text, matched token to token (see the module docstring for the rules).

    sender_ids, receiver_ids: the ids each model reads (Ss and Sr of them); *_spans: their character spans;
    receiver_to_sender: (Sr,) sender token per receiver token, -1 for none; sender_to_receiver: (Ss,) the
    converse; groups: per receiver token, the sender tokens overlapping its characters (for mean pooling).
    """

    text: str
    sender_ids: tuple[int, ...]
    receiver_ids: tuple[int, ...]
    sender_spans: tuple[Span, ...]
    receiver_spans: tuple[Span, ...]
    receiver_to_sender: tuple[int, ...]
    sender_to_receiver: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]

    def index(self) -> torch.Tensor:
        """(Sr,) long tensor of `receiver_to_sender`; refuses receiver tokens without a sender token."""
        if -1 in self.receiver_to_sender:
            missing = [i for i, s in enumerate(self.receiver_to_sender) if s < 0]
            raise AlignmentError(
                f"receiver tokens {missing[:8]} have no sender token (the sender side has no special token to "
                "match them, or no tokens at all); encode both sides with bos=True, or drop those rows"
            )
        return torch.tensor(self.receiver_to_sender, dtype=torch.long)

    def gather(self, sender_rows: torch.Tensor, pooling: str = "last") -> torch.Tensor:
        """Sender rows (..., Ss, D) laid out on the receiver's tokens: (..., Sr, D).

        pooling "last": the row of the sender token covering each receiver token's last character; "mean": the
        mean of the rows of the sender tokens overlapping its characters.
        """
        if sender_rows.shape[-2] != len(self.sender_ids):
            raise AlignmentError(f"{sender_rows.shape[-2]} sender rows for {len(self.sender_ids)} sender tokens")
        if pooling == "last":
            return sender_rows.index_select(-2, self.index().to(sender_rows.device))
        if pooling != "mean":
            raise AlignmentError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.index()  # same refusal as "last"
        weights = torch.zeros(len(self.receiver_ids), len(self.sender_ids), dtype=sender_rows.dtype)
        for r, group in enumerate(self.groups):
            weights[r, list(group)] = 1.0 / len(group)
        return weights.to(sender_rows.device) @ sender_rows

    def sender_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sender index, receiver index), one pair per sender token that has a receiver token: (N,), (N,)."""
        pairs = [(s, r) for s, r in enumerate(self.sender_to_receiver) if r >= 0]
        sender, receiver = zip(*pairs, strict=True) if pairs else ((), ())
        return torch.tensor(sender, dtype=torch.long), torch.tensor(receiver, dtype=torch.long)


def align_spans(
    text: str,
    sender: tuple[Sequence[int], Sequence[Span]],
    receiver: tuple[Sequence[int], Sequence[Span]],
) -> Alignment:
    """Align two (ids, spans) tokenizations of `text`."""
    (sender_ids, sender_spans), (receiver_ids, receiver_spans) = sender, receiver
    if len(sender_ids) != len(sender_spans) or len(receiver_ids) != len(receiver_spans):
        raise AlignmentError("each tokenization needs one span per token id")
    receiver_to_sender = cover_index(receiver_spans, sender_spans)
    return Alignment(
        text,
        tuple(sender_ids),
        tuple(receiver_ids),
        tuple(map(tuple, sender_spans)),
        tuple(map(tuple, receiver_spans)),
        tuple(receiver_to_sender),
        tuple(cover_index(sender_spans, receiver_spans)),
        tuple(overlap_groups(receiver_spans, sender_spans, receiver_to_sender)),
    )


def align_tokens(text: str, sender_tokenizer, receiver_tokenizer, bos: bool = True) -> Alignment:
    """Tokenize `text` with both tokenizers (`encode_with_offsets`) and align the two by character offsets."""
    return align_spans(
        text, encode_with_offsets(sender_tokenizer, text, bos), encode_with_offsets(receiver_tokenizer, text, bos)
    )
