"""A receiver's prompt as pieces, and its cache assembled from them, whatever channel supplies each piece.

A prompt is laid out as pieces before it is tokenized (`kvmesh.agents.prompts`); each piece is a run of text
and, once tokenized, its token ids, with where a cache of it may come from:

    kind    what it is                                               where its cache comes from
    head    system prompt, examples, the user turn's opening markup  a template (a KV channel encodes it once)
    own     the receiver's own text: private notes, text messages    nowhere: prefilled in place
    task    the task's context and question                          the first turn that encoded it, if any
    tail    the instruction and the assistant turn's opening markup  prefilled by the turn's own row

Those are the prompt's own kinds; a channel's layout adds kinds of its own (kv-reuse: `glue` and `reply`,
kv-select and c2c: `latent`, c2c fusion: `fuse`), which only that channel reads. Two properties of a piece
are what the planner sees of them: `front` (read in front of the receiver's whole prompt, as a latent context)
and a piece with neither text nor tokens, which carries only a cache's rows (c2c fusion's sender rows).

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

from kvmesh.llm.base import Generation, GenerationRequest, LanguageModel, LatentSpan, run_requests
from kvmesh.llm.prefix import PrefixCache
from kvmesh.llm.segment import KVSegment

HEAD, OWN, TASK, TAIL = "head", "own", "task", "tail"  # the prompt's own kinds; channels add theirs


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
        kind: head, own, task or tail (the table above), or a kind of the channel that laid the piece out.
        channel: the channel that laid the piece out or made its source; None for the receiver's own layout.
        front: read in front of the receiver's whole prompt (a latent context), not where the message stands.
    """

    token_ids: tuple[int, ...] = ()
    source: KVSegment | None = None
    key: Hashable = None
    own: bool = False
    text: str = ""
    kind: str = ""
    channel: str | None = None
    front: bool = False

    def __post_init__(self) -> None:
        if not self.token_ids and not self.text:  # no tokens of its own: it only carries a cache's rows
            if self.source is None:
                raise ValueError("a piece needs at least one token (or, before tokenization, its text), or a source")
            return
        if self.own and self.source is not None:
            raise ValueError("a piece of the receiver's own text has no source cache")
        if self.source is not None and self.token_ids and self.source.token_ids != tuple(self.token_ids):
            raise ValueError("a piece's source cache must hold exactly the piece's tokens")


# Writes one piece's keys and values into its slots: (keys (L, H, S, D), values (L, H, S, D), first position).
Placement = Callable[[torch.Tensor, torch.Tensor, int], None]


@dataclass(init=False)
class Assembly(PrefixCache):
    """A receiver's prompt cache, built in place in buffers with room for what follows: the prefix its turn's row
    starts from (a `PrefixCache`: keys and values (L, H, capacity, D) whose first `length` positions hold the
    prompt's first tokens, the `rest` still to prefill, and `latent`, positions only some layers read, a sender's
    context on kv-select edges), and what building it took: `seconds`, and `reused_tokens`, how many of the
    `length` came from caches (the others were the receiver's own text, prefilled).
    """

    seconds: float = 0.0
    reused_tokens: int = -1  # -1: all `length` tokens

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        length: int,
        token_ids: tuple[int, ...],
        rest: list[int],
        seconds: float = 0.0,
        reused_tokens: int = -1,
        latent: LatentSpan | None = None,
    ) -> None:
        # written out: a generated one would take the inherited `latent` before `seconds`
        super().__init__(keys, values, length, token_ids, rest, latent)
        self.seconds = seconds
        self.reused_tokens = length if reused_tokens < 0 else reused_tokens

    @property
    def prefix(self) -> KVSegment:
        """The filled part as a segment (views, no copy)."""
        return KVSegment(self.keys[:, :, : self.length], self.values[:, :, : self.length], 0, self.token_ids)


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
