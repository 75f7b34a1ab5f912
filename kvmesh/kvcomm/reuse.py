"""The reuse engine (KVCOMM-style, training-free): build a receiver's prompt cache from caches that exist already.

A receiver's prompt is a list of pieces, in order:

    head     the receiver's own text before anything shared (system prompt, examples): an exact prefix,
             encoded once per distinct text and kept (a template segment)
    middle   shared text: the task encoded once by a donor, each sender's reply from the sender's own decode,
             and the fixed glue between them ("Message from ..."), encoded once standalone; and the
             receiver's own text (private notes, a message that came as text), prefilled in place over the
             pieces before it
    tail     the last few tokens (instruction, assistant header): always prefilled, so the first token is
             computed by the model over the assembled cache

Each middle piece's donor cache is moved to its position in the receiver's prompt (keys re-rotated) and
corrected with the offsets its anchors predict (`anchors.py`). When any middle piece fails the anchor test,
the engine returns None: the caller prefills densely and hands the dense cache to `learn`, which adds one anchor
per middle piece. So accuracy is bought with dense calls, and `gamma` sets the price.

Everything the engine does is counted in the reuse path's time to first token by its callers; template
segments are the exception KVCOMM also makes (encoded once ahead), and their cost is in `stats.template_s`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from kvmesh.kvcomm.anchors import AnchorPool, describe
from kvmesh.kvcomm.cache import cache_over, read_columns
from kvmesh.kvcomm.rope import Rope
from kvmesh.kvcomm.segment import KVSegment

if TYPE_CHECKING:
    from kvmesh.llm import LocalLM

MIN_WEIGHT = 1e-3  # anchors weighing less than this are skipped when offsets are averaged


@dataclass(frozen=True)
class Piece:
    """A run of prompt tokens.

    Args:
        token_ids: the tokens, exactly as they appear in the receiver's prompt.
        source: a cache of exactly these tokens made elsewhere (any start position), or None.
        key: what kind of text this is, for the anchor pool (e.g. "task", ("reply", "agent_2")). Middle pieces
            without a source use their own text as key.
        own: the receiver's own text, with no cache anywhere: prefilled in place over the pieces before it
            (exact given them; no anchors).
    """

    token_ids: tuple[int, ...]
    source: KVSegment | None = None
    key: Hashable = None
    own: bool = False

    def __post_init__(self) -> None:
        if not self.token_ids:
            raise ValueError("a piece needs at least one token")
        if self.own and self.source is not None:
            raise ValueError("a piece of the receiver's own text has no source cache")
        if self.source is not None and self.source.token_ids != tuple(self.token_ids):
            raise ValueError("a piece's source cache must hold exactly the piece's tokens")


@dataclass
class ReuseConfig:
    """Settings of the reuse engine.

    Args:
        gamma: reuse when an anchor's descriptor lies within this distance of the new segment's (in [0, 2]);
            larger reuses more, 0 only for segments seen before. Measured (benchmarks/descriptor_distances.py):
            texts of one kind lie 0.03-0.23 apart, different kinds 0.46-0.67. 0.4 stays below the latter; the
            GSM8K chain team on SmolLM2-135M reused 55% of its turns at 0.3 and 74% at 0.4 (README).
        max_anchors: anchors kept per (receiver, placeholder).
        min_anchors: dense calls per (receiver, placeholder) before it is reused; more anchors average better.
        max_anchor_tokens: positions of offsets kept per anchor.
        max_anchor_mb: bound on all anchors' memory.
        temperature: softmax temperature over descriptor distances; 0.1 averages anchors of similar text.
        templates: template segments kept (least recently used dropped first).
        correct: add the anchors' offsets; False moves caches uncorrected (an ablation: anchors still decide
            reuse or prefill).
        replies: read senders' replies from their caches (the kv-reuse channel); False re-encodes them as
            the receiver's own text, exact given what precedes, and reuses only templates and the task.
    """

    gamma: float = 0.4
    max_anchors: int = 20
    min_anchors: int = 3
    max_anchor_tokens: int = 1024
    max_anchor_mb: float = 1024.0
    temperature: float = 0.1
    templates: int = 256
    correct: bool = True
    replies: bool = True


@dataclass
class ReuseStats:
    calls: int = 0  # assemble() calls
    reused_calls: int = 0  # calls that skipped dense prefill
    prompt_tokens: int = 0  # tokens of all prompts seen
    reused_tokens: int = 0  # prompt tokens served from caches instead of prefilled
    template_s: float = 0.0  # one-off time spent encoding template segments
    template_tokens: int = 0

    @property
    def reuse_rate(self) -> float:
        return self.reused_calls / self.calls if self.calls else 0.0


@dataclass
class Assembly:
    """A receiver's prompt cache, built in place in buffers with room for what follows.

    keys, values: (L, H, capacity, D); the first `length` positions hold the prompt's first tokens
    (positions 0 .. length - 1), and `rest` are the prompt tokens still to prefill after them.
    `reused_tokens` of the `length` came from caches; the others were the receiver's own text, prefilled.
    """

    keys: torch.Tensor
    values: torch.Tensor
    length: int
    token_ids: tuple[int, ...]
    rest: list[int]
    seconds: float = 0.0
    reused_tokens: int = -1  # -1: all `length` tokens

    def __post_init__(self) -> None:
        if self.reused_tokens < 0:
            self.reused_tokens = self.length

    @property
    def prefix(self) -> KVSegment:
        """The filled part as a segment (views, no copy)."""
        return KVSegment(self.keys[:, :, : self.length], self.values[:, :, : self.length], 0, self.token_ids)

    def cache(self, config) -> DynamicCache:
        """A one-row transformers cache over the buffers (no copy), ready to prefill `rest`."""
        return cache_over(self.keys, self.values, self.length, config)


class ReuseEngine:
    """Assembles prompt caches for one model from template, donor and sender segments, corrected by anchors."""

    def __init__(self, llm: LocalLM, config: ReuseConfig | None = None, sink: Sequence[int] = ()) -> None:
        self.llm = llm
        self.config = config or ReuseConfig()
        self.rope = Rope.from_model(llm.model)  # raises UnsupportedModelError, saying why, for other models
        self.sink = tuple(sink)  # tokens that precede standalone encodings (the chat template's first token)
        self.anchors = AnchorPool(
            self.config.max_anchors,
            self.config.max_anchor_tokens,
            int(self.config.max_anchor_mb * 2**20),
            self.config.temperature,
            self.config.gamma,
            self.config.min_anchors,
        )
        self.stats = ReuseStats()
        self._templates: OrderedDict[tuple[int, ...], KVSegment] = OrderedDict()

    def encode(self, ids: Sequence[int]) -> KVSegment:
        """The exact cache of `ids` encoded from position 0 (one prefill)."""
        return KVSegment(*read_columns(self.llm.prefill(ids).cache, 0, 0, len(ids)), 0, tuple(ids))

    def template(self, ids: Sequence[int], standalone: bool = False) -> KVSegment:
        """A template segment, encoded once and kept: exact from position 0, or (standalone) after the sink
        tokens with those dropped, for glue text placed mid-prompt."""
        key = (standalone, *ids)
        if key in self._templates:
            self._templates.move_to_end(key)
            return self._templates[key]
        started = time.perf_counter()
        if standalone and self.sink:
            segment = self.encode(self.sink + tuple(ids)).slice(len(self.sink))
        else:
            segment = self.encode(ids)
        self.stats.template_s += time.perf_counter() - started
        self.stats.template_tokens += len(key) - 1
        self._templates[key] = segment
        if len(self._templates) > self.config.templates:
            self._templates.popitem(last=False)
        return segment

    def _middle(self, pieces: Sequence[Piece]) -> list[tuple[Hashable, KVSegment | Piece]]:
        """(anchor key, donor cache) of each middle piece; glue without a donor uses its standalone template;
        the receiver's own text is (None, the piece)."""
        return [
            (None, piece)
            if piece.own
            else (piece.key, piece.source)
            if piece.source is not None
            else (("glue", piece.token_ids), self.template(piece.token_ids, True))
            for piece in pieces[1:-1]
        ]

    def assemble(self, receiver: Hashable, pieces: Sequence[Piece], spare: int = 256) -> Assembly | None:
        """The receiver's prompt cache up to its tail, or None when a piece must be prefilled densely first.

        The cache is written once, in place: each source moved straight into its slot of one buffer, its
        anchors' offsets added there. `spare` positions are left free after the tail for decoding.
        """
        if len(pieces) < 3:
            raise ValueError("a reusable prompt has a head, at least one middle piece and a tail")
        started = time.perf_counter()
        self.stats.calls += 1
        self.stats.prompt_tokens += sum(len(p.token_ids) for p in pieces)
        middle = self._middle(pieces)
        weights = [
            None if key is None else self.anchors.weights((receiver, key), describe(source.keys))
            for key, source in middle
        ]
        if any(w is None for w, (key, _) in zip(weights, middle, strict=True) if key is not None):
            return None
        head = self.template(pieces[0].token_ids)
        length = len(head) + sum(len(source.token_ids) for _, source in middle)
        shape = (*head.keys.shape[:2], length + len(pieces[-1].token_ids) + spare, head.keys.shape[3])
        keys, values = head.keys.new_empty(shape), head.values.new_empty(shape)
        keys[:, :, : len(head)], values[:, :, : len(head)] = head.keys, head.values
        position, own = len(head), 0
        for (key, source), weight in zip(middle, weights, strict=True):
            end = position + len(source.token_ids)
            if key is None:  # own text: the model writes it into the buffer, after everything placed so far
                self.llm.prefill(source.token_ids, cache_over(keys, values, position, self.llm.model.config))
                position, own = end, own + len(source.token_ids)
                continue
            self.rope.rotate_into(source.keys, position - source.start, keys[:, :, position:end])
            values[:, :, position:end] = source.values
            if self.config.correct:
                weight = torch.where(weight >= MIN_WEIGHT, weight, 0)
                slots = keys[:, :, position:end], values[:, :, position:end]
                self.anchors.apply((receiver, key), weight / weight.sum(), *slots)
            position = end
        self.stats.reused_calls += 1
        self.stats.reused_tokens += length - own
        token_ids = tuple(t for piece in pieces[:-1] for t in piece.token_ids)
        seconds = time.perf_counter() - started
        return Assembly(keys, values, length, token_ids, list(pieces[-1].token_ids), seconds, length - own)

    def learn(self, receiver: Hashable, pieces: Sequence[Piece], dense: KVSegment) -> None:
        """Add one anchor per middle piece from the receiver's dense prompt cache (positions from 0)."""
        position = len(pieces[0].token_ids)
        for key, source in self._middle(pieces):
            length = len(source.token_ids)
            if key is None:  # own text: nothing to learn
                position += length
                continue
            moved = source.moved(self.rope, position)
            real = dense.slice(position, position + length)
            self.anchors.add((receiver, key), describe(source.keys), real.keys - moved.keys, real.values - moved.values)
            position += length
