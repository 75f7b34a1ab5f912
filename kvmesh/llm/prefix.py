"""A row's prefix: a prebuilt cache of its prompt's first tokens, in buffers with room for what follows.

A `GenerationRequest` may start from a `PrefixCache`; the engine then prefills only the rest of the prompt, writing
it into the prefix's own buffers (`cache` adopts them, no copy). A prefix may also carry a `LatentSpan`: positions
only some layers read (kv-select's shared context), and positions none reads (token selection's dropped ones).
KV channels build their prefixes as subclasses (`kvmesh.kvcomm.assembly.Assembly` adds how it was built).

Caveat: the buffers are adopted, not copied, so a prefix is used by one row at a time; a second row on the same
prefix would write its own rest over the first one's. Adopting needs full-attention layers (`cache_over`).

Shapes: L layers, H key/value heads, D head dimension; buffers are (L, H, capacity, D).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from transformers import DynamicCache

from kvmesh.llm.cache import cache_over
from kvmesh.llm.segment import KVSegment

PrefixT = TypeVar("PrefixT", bound="PrefixCache")


@dataclass(frozen=True)
class LatentSpan:
    """Prefix positions [start, end) that only the layers in `layers` read (kv-select: a sender's context shared
    in some layers); every other layer reads the row as if those positions were not there. Positions in
    `dropped` (token selection) are read by no layer at all: they stay in the cache, masked like padding."""

    start: int
    end: int
    layers: frozenset[int]
    dropped: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"a latent span needs 0 <= start < end, got [{self.start}, {self.end})")
        if any(not self.start <= p < self.end for p in self.dropped):
            raise ValueError(f"dropped positions must lie in the span [{self.start}, {self.end})")


@dataclass
class PrefixCache:
    """The first `length` positions of a prompt, cached: keys and values (L, H, capacity, D) whose first `length`
    positions hold `token_ids` (positions 0 .. length - 1); `rest` are the prompt tokens still to prefill after
    them, and the capacity leaves room for them (and for decoding, if spare). `latent`: positions of the prefix
    only some layers read, or None (every layer reads every position)."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int
    token_ids: tuple[int, ...]
    rest: list[int]
    latent: LatentSpan | None = None

    @classmethod
    def of(cls: type[PrefixT], segment: KVSegment, rest: Sequence[int], spare: int = 0) -> PrefixT:
        """A copy of `segment` (from position 0) in a buffer with room for `rest` and `spare` more positions."""
        if segment.start != 0:
            raise ValueError(f"a prefix starts at position 0, this segment at {segment.start}")
        shape = (*segment.keys.shape[:2], len(segment) + len(rest) + spare, segment.keys.shape[3])
        keys, values = segment.keys.new_empty(shape), segment.values.new_empty(shape)
        keys[:, :, : len(segment)], values[:, :, : len(segment)] = segment.keys, segment.values
        return cls(keys, values, len(segment), segment.token_ids, list(rest))

    def cache(self, config) -> DynamicCache:
        """A one-row transformers cache over the buffers (no copy), ready to prefill `rest` into them."""
        return cache_over(self.keys, self.values, self.length, config)
