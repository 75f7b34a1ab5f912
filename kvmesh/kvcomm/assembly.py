"""A receiver's prompt as pieces, and its cache assembled from them, whatever channel supplies each piece.

A prompt is laid out as pieces before it is tokenized (`kvmesh.agents.prompts`); each piece is a run of text
and, once tokenized, its token ids, with where a cache of it may come from:

    kind    what it is                                               where its cache comes from
    head    system prompt, examples, the user turn's opening markup  a template (a KV channel encodes it once)
    own     the receiver's own text: private notes, text messages    nowhere: prefilled in place
    task    the task's context and question                          the first turn that encoded it, if any
    glue    "Message from X (this round):" before a cached reply     a template, encoded once standalone
    reply   a sender's reply, as the ids it generated                the sender's own decode cache
    tail    the instruction and the assistant turn's opening markup  prefilled by the turn's own row
    fuse    no tokens: a sender's rows of the task, fused into it    the sender's prompt cache (c2c fusion)

A channel that reads caches turns pieces into placements (functions that write a piece's keys and values into
its slots of the receiver's buffer); `assemble` writes them into one buffer, in order, and prefills the own
text between them in place, over everything placed before it. Prefilling is never done here: `assemble` is a
preparation, a generator that yields the prefill-only rows it needs (one per run of own text) and is sent
their results, so those rows join the model's running batch with every other row. The tail is left for the
turn's own row, which starts from the assembly as its prefix.

Shapes: L layers, H key/value heads, S positions, D head dimension; a buffer is (L, H, capacity, D).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from kvmesh.llm.base import Generation, GenerationRequest, LanguageModel, LatentSpan, run_requests
from kvmesh.llm.cache import cache_over
from kvmesh.llm.segment import KVSegment

HEAD, OWN, TASK, GLUE, REPLY, TAIL = "head", "own", "task", "glue", "reply", "tail"
LATENT = "latent"  # a sender's context cache read before the receiver's own prompt, by some layers (kv-select)
FUSE = "fuse"  # a sender's cache of the task, aligned to the receiver's task tokens and fused into them (c2c)


@dataclass(frozen=True)
class Piece:
    """A run of prompt tokens (or, before tokenization, of prompt text).

    Args:
        token_ids: the tokens, exactly as they appear in the receiver's prompt (empty until tokenized).
        source: a cache of exactly these tokens made elsewhere (any start position), or None.
        key: what kind of text this is, for anchor pools (e.g. "task", ("reply", "agent_2", "spatial")). Middle
            pieces without a source use their own text as key.
        own: the receiver's own text, with no cache anywhere: prefilled in place over the pieces before it.
        text: the piece's text.
        kind: head, own, task, glue, reply, tail, latent or fuse (the table above).
        channel: the channel that laid the piece out or made its source; None for the receiver's own layout.
    """

    token_ids: tuple[int, ...] = ()
    source: KVSegment | None = None
    key: Hashable = None
    own: bool = False
    text: str = ""
    kind: str = ""
    channel: str | None = None

    def __post_init__(self) -> None:
        if self.kind == FUSE:
            if self.source is None or self.token_ids or self.text:
                raise ValueError("a fuse piece has no tokens of its own, only the sender's rows as its source")
            return
        if not self.token_ids and not self.text:
            raise ValueError("a piece needs at least one token (or, before tokenization, its text)")
        if self.own and self.source is not None:
            raise ValueError("a piece of the receiver's own text has no source cache")
        if self.source is not None and self.token_ids and self.source.token_ids != tuple(self.token_ids):
            raise ValueError("a piece's source cache must hold exactly the piece's tokens")


# Writes one piece's keys and values into its slots: (keys (L, H, S, D), values (L, H, S, D), first position).
Placement = Callable[[torch.Tensor, torch.Tensor, int], None]


@dataclass
class Assembly:
    """A receiver's prompt cache, built in place in buffers with room for what follows.

    keys, values: (L, H, capacity, D); the first `length` positions hold the prompt's first tokens
    (positions 0 .. length - 1), and `rest` are the prompt tokens still to prefill after them.
    `reused_tokens` of the `length` came from caches; the others were the receiver's own text, prefilled.
    `latent`: positions of the prefix only some layers read (a sender's context on kv-select edges).
    """

    keys: torch.Tensor
    values: torch.Tensor
    length: int
    token_ids: tuple[int, ...]
    rest: list[int]
    seconds: float = 0.0
    reused_tokens: int = -1  # -1: all `length` tokens
    latent: LatentSpan | None = None  # positions only some layers read (kv-select)

    def __post_init__(self) -> None:
        if self.reused_tokens < 0:
            self.reused_tokens = self.length

    @classmethod
    def of(cls, segment: KVSegment, rest: Sequence[int], spare: int = 0) -> Assembly:
        """A copy of `segment` (from position 0) in a buffer with room for `rest` and `spare` more positions."""
        if segment.start != 0:
            raise ValueError(f"a prefix starts at position 0, this segment at {segment.start}")
        shape = (*segment.keys.shape[:2], len(segment) + len(rest) + spare, segment.keys.shape[3])
        keys, values = segment.keys.new_empty(shape), segment.values.new_empty(shape)
        keys[:, :, : len(segment)], values[:, :, : len(segment)] = segment.keys, segment.values
        return cls(keys, values, len(segment), segment.token_ids, list(rest))

    @property
    def prefix(self) -> KVSegment:
        """The filled part as a segment (views, no copy)."""
        return KVSegment(self.keys[:, :, : self.length], self.values[:, :, : self.length], 0, self.token_ids)

    def cache(self, config) -> DynamicCache:
        """A one-row transformers cache over the buffers (no copy), ready to prefill `rest` into them."""
        return cache_over(self.keys, self.values, self.length, config)


# A cache being prepared: yields the rows it needs run, is sent their results, returns what it built.
Preparation = Generator[list[GenerationRequest], list[Generation], "Assembly | None"]


def assemble(
    pieces: Sequence[Piece], placements: Sequence[Placement | None], like: KVSegment, spare: int = 0
) -> Preparation:
    """Write every piece but the tail into one buffer: a placed piece by its placement, own text (a piece
    without one) by a prefill-only row over everything before it, which writes into the buffer in place.

    `like` gives the buffer's layout (layers, heads, head dimension, dtype, device); `spare` positions are left
    free after the tail for decoding. The first piece must be placed (a row needs a prefix to prefill after).
    """
    if len(placements) != len(pieces) or len(pieces) < 2:
        raise ValueError("need a placement (or None) for each piece, and a tail after them")
    if placements[0] is None:
        raise ValueError("the first piece must be placed from a cache: own text needs something to follow")
    started = time.perf_counter()
    ids = tuple(t for piece in pieces[:-1] for t in piece.token_ids)
    shape = (*like.keys.shape[:2], len(ids) + len(pieces[-1].token_ids) + spare, like.keys.shape[3])
    keys, values = like.keys.new_empty(shape), like.values.new_empty(shape)

    def prefill(lo: int, hi: int) -> list[GenerationRequest]:
        """The row that prefills own text ids[lo:hi] over the buffer's first `lo` positions, in place."""
        prefix = Assembly(keys, values, lo, ids[:lo], list(ids[lo:hi]))
        return [GenerationRequest(list(ids[:hi]), max_new_tokens=0, prefix=prefix)]

    position, prefilled, run = 0, 0, None  # run: where the own text not yet prefilled begins
    for piece, place in zip(pieces[:-1], placements[:-1], strict=True):
        end = position + len(piece.token_ids)
        if place is None:
            run = position if run is None else run
        else:
            if run is not None:
                yield prefill(run, position)
                prefilled, run = prefilled + position - run, None
            place(keys[:, :, position:end], values[:, :, position:end], position)
        position = end
    if run is not None:
        yield prefill(run, position)
        prefilled += position - run
    seconds = time.perf_counter() - started
    return Assembly(keys, values, len(ids), ids, list(pieces[-1].token_ids), seconds, len(ids) - prefilled)


def run_preparation(preparation: Preparation, model: LanguageModel):
    """Drive a preparation to its end, running the rows it asks for on `model` (outside a scheduler: tests,
    benchmarks); returns what it built."""
    try:
        rows = next(preparation)
        while True:
            rows = preparation.send(run_requests(model, rows))
    except StopIteration as done:
        return done.value
