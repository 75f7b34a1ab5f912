"""KVSegment: the cached keys and values of a run of tokens, and the positions they were encoded at.

A segment is what a running batch hands back when a row keeps its caches (`Generation.prompt_kv`, `reply_kv`)
and what KV channels splice into a receiver's cache: the task text encoded once, a template prefix encoded
once ahead, an agent's reply taken from its own decode. Moving one to other positions is the channel's
business (`kvmesh.kvcomm.rope`).
Keys and values are stacked over layers so that moving, slicing and joining are one tensor operation each:

    keys, values: (L, H, S, D)   L layers, H key/value heads, S tokens, D head dimension
    start: position of the first token; the segment covers positions start .. start + S - 1

Segments are immutable in use: every operation returns a new one and never writes into its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch


@dataclass(frozen=True)
class KVSegment:
    keys: torch.Tensor  # (L, H, S, D), rotated for positions start .. start + S - 1
    values: torch.Tensor  # (L, H, S, D)
    start: int
    token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.keys.shape != self.values.shape or self.keys.dim() != 4:
            raise ValueError(
                f"keys and values must both be (L, H, S, D), got {self.keys.shape} and {self.values.shape}"
            )
        if self.keys.shape[2] != len(self.token_ids):
            raise ValueError(f"{self.keys.shape[2]} cached positions for {len(self.token_ids)} token ids")
        if self.start < 0:
            raise ValueError(f"a segment cannot start before position 0, got {self.start}")

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def end(self) -> int:
        """One past the last position."""
        return self.start + len(self)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def slice(self, lo: int, hi: int | None = None) -> KVSegment:
        """Tokens lo .. hi - 1 of the segment (indices relative to it), at their own positions."""
        hi = len(self) if hi is None else hi
        if not 0 <= lo <= hi <= len(self):
            raise IndexError(f"slice [{lo}, {hi}) of a {len(self)}-token segment")
        return KVSegment(self.keys[:, :, lo:hi], self.values[:, :, lo:hi], self.start + lo, self.token_ids[lo:hi])

    def detached(self) -> KVSegment:
        """A copy that owns its memory (a slice keeps the whole tensor it views alive)."""
        return KVSegment(self.keys.clone(), self.values.clone(), self.start, self.token_ids)

    def select_layers(self, layers: Sequence[int]) -> KVSegment:
        index = torch.as_tensor(list(layers), dtype=torch.long, device=self.keys.device)
        return KVSegment(self.keys[index], self.values[index], self.start, self.token_ids)

    @staticmethod
    def concat(segments: Sequence[KVSegment]) -> KVSegment:
        """Join segments that follow each other in position (each starts where the previous ends)."""
        if not segments:
            raise ValueError("nothing to concatenate")
        for before, after in pairwise(segments):
            if after.start != before.end:
                raise ValueError(
                    f"segments must be contiguous: one ends at {before.end}, the next starts at {after.start}; "
                    "move it first"
                )
        if len(segments) == 1:
            return segments[0]
        return KVSegment(
            torch.cat([s.keys for s in segments], dim=2),
            torch.cat([s.values for s in segments], dim=2),
            segments[0].start,
            tuple(t for s in segments for t in s.token_ids),
        )
