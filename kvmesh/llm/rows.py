"""The running batch's state: each row's progress (`Row`) and rows on one left-padded cache (`StackedRows`).

A prefill produces `StackedRows` (one per forward pass), and the running batch is one `StackedRows` too: admitted
rows are stacked onto it, finished ones selected out, and every decode step appends one column to it. Keeping the
per-row tensors in one record keeps them in step through joins, retirements and trims.

Left padding keeps every row's last token in the last column, so one decode step appends one column for all rows;
the mask hides the padding. Caveat: `trim_padding` drops cache columns, which only full-attention caches allow
(`kvmesh.llm.cache.trim_left`; sliding-window layers track positions themselves).

Shapes: B = rows, W = cache width (longest row incl. its left padding), V = vocabulary, L = layers, d = hidden
width.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from kvmesh.llm.base import GenerationRequest
from kvmesh.llm.cache import select_rows, stack_left_padded, trim_left
from kvmesh.llm.segment import KVSegment
from kvmesh.llm.streaming import TextStream


@dataclass(eq=False)  # a row is itself: field equality would compare its prefix's tensors
class Row:
    """One row of a running batch, from submission to its end."""

    request: GenerationRequest
    tag: Hashable
    generated: list[int] = field(default_factory=list)
    text: str | None = None  # set when a stop string cut the text
    started_at: float = 0.0
    first_token_at: float = 0.0
    prefill_s: float = 0.0  # this row's share of the prefill forward pass it was in
    prompt_kv: KVSegment | None = None
    adapter: str | None = None  # the name of the row's adapter version inside the model (None: base)
    stream: TextStream | None = None  # with `on_text`: the reply's pieces handed out so far
    thoughts: int = 0  # latent thoughts fed back so far (`GenerationRequest.latent_steps`)
    logprobs: list[float] = field(default_factory=list)  # with `GenerationRequest.logprobs`: one per token
    generator: torch.Generator | None = None  # with `GenerationRequest.seed`: the row's own draws

    @property
    def thinking(self) -> bool:
        """Whether the row's next input is a latent thought rather than a token."""
        return self.thoughts < self.request.latent_steps

    @property
    def leaves_after_prefill(self) -> bool:
        """A prefill-only row with no thoughts to run: it leaves the batch right after its prefill."""
        return self.request.prefill_only and not self.request.latent_steps


@dataclass
class StackedRows:
    """Rows on one stacked cache, each left-padded to the common width, and what their next step needs."""

    cache: DynamicCache
    mask: torch.Tensor  # (B, W) 1 where the row reads the column, 0 for padding and dropped columns
    logits: torch.Tensor  # (B, V) of each row's last position: its next token comes from them
    hidden: torch.Tensor  # (B, d) each row's last final hidden state: its next latent thought comes from it
    positions: torch.Tensor  # (B, 1) each row's next position (counting its real tokens only)
    latent: torch.Tensor  # (B, W) bool: columns only some layers read
    reads: torch.Tensor  # (B, L) bool: the layers of each row that read them
    rows: list[Row]
    temperatures: torch.Tensor = field(init=False)  # (B,) each row's, from its request
    top_ps: torch.Tensor = field(init=False)  # (B,) each row's nucleus mass, from its request

    def __post_init__(self) -> None:
        self.temperatures = torch.tensor([row.request.temperature for row in self.rows], device=self.logits.device)
        self.top_ps = torch.tensor([row.request.top_p for row in self.rows], device=self.logits.device)

    def select(self, keep: list[int]) -> StackedRows:
        """Only the rows at batch indices `keep` (increasing), their cache rows selected in place."""
        if len(keep) == len(self.rows):
            return self
        index = torch.tensor(keep, device=self.mask.device)
        select_rows(self.cache, index)
        tensors = (self.mask, self.logits, self.hidden, self.positions, self.latent, self.reads)
        return StackedRows(self.cache, *(tensor[index] for tensor in tensors), [self.rows[i] for i in keep])

    @staticmethod
    def stack(parts: Sequence[StackedRows], config) -> StackedRows:
        """The parts' rows in one batch, in order: caches and column tensors left-padded to the widest part."""
        if len(parts) == 1:
            return parts[0]
        width = max(part.mask.shape[1] for part in parts)

        def padded(columns: Sequence[torch.Tensor]) -> torch.Tensor:
            return torch.cat([F.pad(c, (width - c.shape[1], 0)) for c in columns])

        return StackedRows(
            stack_left_padded([part.cache for part in parts], width, config),
            padded([part.mask for part in parts]),
            torch.cat([part.logits for part in parts]),
            torch.cat([part.hidden for part in parts]),
            torch.cat([part.positions for part in parts]),
            padded([part.latent for part in parts]),
            torch.cat([part.reads for part in parts]),
            [row for part in parts for row in part.rows],
        )

    def trim_padding(self) -> None:
        """Drop the leading columns that are padding in every row (full-attention caches only: see above)."""
        unused = int(self.mask.argmax(dim=1).min())
        if unused > 0:
            trim_left(self.cache, unused)
            self.mask, self.latent = self.mask[:, unused:], self.latent[:, unused:]
