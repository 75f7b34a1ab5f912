"""Fusion over shared text (C2C's own mode): the receiver's cache of the task is fused with the sender's cache of
the same text, the two tokenizations aligned by character offsets.

    sender's turn     keeps its prompt's cache; the task's rows lose the sender's RoPE and are laid out on the
                      receiver's tokens of the task text (`task_rows`: one sender row per receiver token)
    receiver's turn   one prefill-only row reads its prompt up to the task's end; the task's rows lose the
                      receiver's RoPE, are fused with each sender's (`KVMapper.fuse`) and rotated back, in the
                      layers the mapper feeds (the others keep their rows bit for bit); the rest of the prompt is
                      prefilled after them by the turn's own row (`fuse_task`)

The receiver reads no extra positions, so what the sender knows (its notes, read before the task) reaches it
only through how the sender read the task. Usage: the receiver's prompt is all its own input (nothing is
`cache_read`); a message moves the sender's aligned task rows.

Caveat: the task must tokenize inside a prompt as it does alone (true for `kvmesh.agents.prompts` layouts, whose
pieces meet at line breaks); when it does not, `AlignmentError` says which side differs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from kvmesh.kvcomm.assembly import TASK, Assembly, Piece, Preparation
from kvmesh.kvcomm.c2c.align import AlignmentError, align_spans, encode_with_offsets
from kvmesh.kvcomm.c2c.mappers.base import KVMapper
from kvmesh.kvcomm.rope import LayerRope
from kvmesh.llm.base import GenerationRequest
from kvmesh.llm.segment import KVSegment

FUSE = "fuse"  # a piece with no tokens: a sender's task rows, aligned to the receiver's task tokens


def _spans(tokenizer, text: str, ids: Sequence[int], who: str) -> list[tuple[int, int]]:
    """Character spans of `ids`, the tokens of `text` as one prompt read them; refuses a different split."""
    alone, spans = encode_with_offsets(tokenizer, text, bos=False)
    if tuple(alone) != tuple(ids):
        raise AlignmentError(
            f"the {who}'s prompt splits the task into other tokens than the task alone ({len(ids)} against "
            f"{len(alone)}), so its rows cannot be aligned by character offsets; start and end the task at a "
            "line break"
        )
    return spans


def task_rows(
    text: str,
    sender_ids: Sequence[int],
    keys: torch.Tensor,
    values: torch.Tensor,
    sender_tokenizer,
    receiver_tokenizer,
) -> KVSegment:
    """The sender's position-free task rows (Ls, Hs, Ss, Ds) laid out on the receiver's tokens of `text`:
    (Ls, Hs, Sr, Ds), each the row of the sender token covering the receiver token's last character. The
    segment's token ids are the receiver's, so the receiver can check that they are the ones it reads."""
    receiver_ids, receiver_spans = encode_with_offsets(receiver_tokenizer, text, bos=False)
    sender = (sender_ids, _spans(sender_tokenizer, text, sender_ids, "sender"))
    alignment = align_spans(text, sender, (receiver_ids, receiver_spans))
    return KVSegment(alignment.gather(keys), alignment.gather(values), 0, tuple(receiver_ids))


def fusing_pieces(pieces: Sequence[Piece], channel: str) -> list[Piece]:
    """The pieces that carry a sender's aligned task rows over `channel`."""
    return [piece for piece in pieces if piece.kind == FUSE and piece.channel == channel]


def fuse_task(
    pieces: Sequence[Piece], senders: Sequence[Piece], rope: LayerRope, mapper: KVMapper, layers: Sequence[int]
) -> Preparation:
    """The receiver's cache up to its task's end, the task's rows fused with each sender's (in order) in `layers`
    (the mapper's open layers; the others keep the receiver's own rows); the rest of the prompt is left to prefill
    after it."""
    started = time.perf_counter()
    ids = [t for piece in pieces for t in piece.token_ids]
    where = [i for i, piece in enumerate(pieces) if piece.kind == TASK]
    if not where:
        raise ValueError("c2c fusion needs the receiver's prompt to hold the task")
    start = sum(len(piece.token_ids) for piece in pieces[: where[0]])
    task = pieces[where[0]]
    end = start + len(task.token_ids)
    for sender in senders:
        if sender.source.token_ids != task.token_ids:
            raise AlignmentError(
                "the sender's task rows were laid out on other tokens than the receiver's prompt reads "
                f"({len(sender.source.token_ids)} against {len(task.token_ids)}); start and end the task at a "
                "line break"
            )
    (read,) = yield [GenerationRequest(ids[:end], max_new_tokens=0, keep_kv=True)]
    kv, positions = read.prompt_kv, torch.arange(start, end)
    keys = rope.strip(kv.keys[:, :, start:end].float(), positions)
    values = kv.values[:, :, start:end].float()
    for sender in senders:
        keys, values = mapper.fuse(keys, values, sender.source.keys.float(), sender.source.values.float())
    fed = list(layers)
    fused_keys, fused_values = kv.keys[:, :, :end].clone(), kv.values[:, :, :end].clone()
    fused_keys[fed, :, start:end] = rope.apply(keys, positions)[fed].to(kv.keys.dtype)
    fused_values[fed, :, start:end] = values[fed].to(kv.values.dtype)
    fused = KVSegment(fused_keys, fused_values, 0, tuple(ids[:end]))
    assembly = Assembly.of(fused, ids[end:])
    assembly.seconds, assembly.reused_tokens = time.perf_counter() - started, 0  # its own prompt, prefilled
    return assembly
