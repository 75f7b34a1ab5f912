"""What the latent channels (`kv-select`, `c2c`) share: a sender's context cache laid out in front of the
receiver's prompt, and the contexts of several senders joined into one prefix.

    pieces = latent_layout("kv-select", glue, content, cached, key)     # one LATENT piece, or own text
    joined = join_contexts(pieces, "kv-select", rope)                   # None when no piece is latent
    joined.context, joined.rest, joined.latent                          # the prefix, the receiver's own ids

Contexts come first in a receiver's prompt (their pieces are `front`: the prompt planner puts them before the
head); each later context is moved by `rope` to start where the one before it ends, so positions run 0 .. C - 1.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from kvmesh.kvcomm.assembly import OWN, Assembly, Piece, Preparation
from kvmesh.kvcomm.rope import Rope
from kvmesh.llm.segment import KVSegment

LATENT = "latent"  # the kind of a piece that is a sender's context, read in front of the receiver's prompt


def latent_layout(channel: str, glue: str, content: str, cached: KVSegment | None, key: Hashable) -> list[Piece]:
    """A message as its sender's context cache (one LATENT piece), or as own text when no cache was kept."""
    if cached is None:
        return [Piece(own=True, text=glue + content, kind=OWN)]
    return [Piece(cached.token_ids, cached, key, kind=LATENT, channel=channel, front=True)]


@dataclass(frozen=True)
class JoinedContexts:
    """The latent pieces of one receiver's prompt, their caches joined (positions 0 .. C - 1), and its own ids."""

    latent: list[Piece]
    context: KVSegment
    rest: list[int]


def join_contexts(pieces: Sequence[Piece], channel: str, rope: Rope) -> JoinedContexts | None:
    """The contexts `channel` laid out in front of a receiver's prompt, one after another; None if there are none."""
    latent = [piece for piece in pieces if piece.kind == LATENT and piece.channel == channel]
    if not latent:
        return None
    if any(piece.kind == LATENT for piece in pieces[len(latent) :]):
        raise ValueError(f"{channel} contexts must come first in a receiver's prompt")
    parts, start = [], 0
    for piece in latent:
        parts.append(rope.move(piece.source, start))
        start += len(piece.source)
    context = KVSegment(
        torch.cat([p.keys for p in parts], dim=2),
        torch.cat([p.values for p in parts], dim=2),
        0,
        tuple(t for p in parts for t in p.token_ids),
    )
    return JoinedContexts(latent, context, [t for piece in pieces[len(latent) :] for t in piece.token_ids])


def ready(assembly: Assembly) -> Preparation:
    """A preparation that needs no rows: it returns the assembly it was given."""
    return assembly
    yield  # unreachable: makes this function a generator
