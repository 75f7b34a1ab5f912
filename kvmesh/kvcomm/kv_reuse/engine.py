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

The engine never calls the model itself. Encoding a template and prefilling own text are prefill-only rows,
which `assemble` yields for its caller to run (in the scheduler, beside every other row of the running batch;
`kvmesh.kvcomm.assembly`). Everything the engine does is counted in the reuse path's time to first token by its
callers; template segments are the exception KVCOMM also makes (encoded once, ahead of the turns that read
them), and their cost is in `stats.template_s`.

Anchors live as long as the engine unless `ReuseConfig.anchors_dir` names a folder: the kv-reuse channel then
loads them when it builds the engine and writes them on `save()` (`anchors.AnchorFolder`); `identity()` says
which model, cache layout and chat template they are valid for. Templates are never kept on disk (cheap to
encode again, and each is exact only for the process's own model weights).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from kvmesh.kvcomm.assembly import Piece, Placement, Preparation, assemble
from kvmesh.kvcomm.kv_reuse.anchors import AnchorPool, describe
from kvmesh.kvcomm.rope import Rope
from kvmesh.llm.base import GenerationRequest, KVModel
from kvmesh.llm.segment import KVSegment

MIN_WEIGHT = 1e-3  # anchors weighing less than this are skipped when offsets are averaged
Template = tuple  # (standalone, *token ids): a template's key


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
        anchors_dir: a folder that keeps the anchors across runs: loaded when the channel first serves a model
            (refused, saying why, when made for another model), written by the channel's save(). None: anchors
            start empty in each process, so a single run reuses nothing.
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
    anchors_dir: str | None = field(default=None, metadata={"alias": "anchors", "writes": True})  # --anchors DIR


@dataclass
class ReuseStats:
    calls: int = 0  # assemble() calls
    reused_calls: int = 0  # calls that skipped dense prefill
    prompt_tokens: int = 0  # tokens of all prompts seen
    reused_tokens: int = 0  # prompt tokens served from caches instead of prefilled
    template_s: float = 0.0  # one-off time spent encoding template segments
    template_tokens: int = 0
    anchors_loaded: int = 0  # anchors read from `anchors_dir` when the engine was built

    @property
    def reuse_rate(self) -> float:
        return self.reused_calls / self.calls if self.calls else 0.0


class ReuseEngine:
    """Assembles prompt caches for one model from template, donor and sender segments, corrected by anchors.

    Args:
        model: the in-process model whose caches are assembled (its rotary embedding moves cached keys).
        config: the engine's settings.
        sink: tokens that precede standalone encodings (the chat template's first token).
    """

    def __init__(self, model: KVModel, config: ReuseConfig | None = None, sink: Sequence[int] = ()) -> None:
        self.model = model
        self.config = config or ReuseConfig()
        self.rope = Rope.from_model(model.model)  # raises UnsupportedModelError, saying why, for other models
        self.sink = tuple(sink)
        self.anchors = AnchorPool(
            self.config.max_anchors,
            self.config.max_anchor_tokens,
            int(self.config.max_anchor_mb * 2**20),
            self.config.temperature,
            self.config.gamma,
            self.config.min_anchors,
        )
        self.stats = ReuseStats()
        self._templates: OrderedDict[Template, KVSegment] = OrderedDict()
        self._encoding: dict[Template, GenerationRequest] = {}  # templates whose rows are out, shared by turns

    def identity(self) -> dict:
        """What the anchors are valid for, as JSON values: the model's name, its cache layout and the sink
        tokens every standalone encoding starts with (they change with the chat template)."""
        config = self.model.model.config
        heads = config.num_attention_heads
        layout = {
            "model_type": getattr(config, "model_type", type(self.model.model).__name__),
            "layers": config.num_hidden_layers,
            "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
            "dtype": str(self.model.model.dtype).removeprefix("torch."),
        }
        return {"model": self.model.spec, "fingerprint": layout, "sink": list(self.sink)}

    # --- templates ---------------------------------------------------------------------------------------------

    def template(self, ids: Sequence[int], standalone: bool = False) -> KVSegment | None:
        """A template segment if it has been encoded (exact from position 0, or standalone: after the sink
        tokens, with those dropped, for glue text placed mid-prompt), else None."""
        key = (standalone, *ids)
        if key in self._templates:
            self._templates.move_to_end(key)
            return self._templates[key]
        return None

    def _template_row(self, key: Template) -> GenerationRequest:
        """The prefill-only row that encodes a template; one row per template while it is out."""
        if key not in self._encoding:
            standalone, ids = key[0], list(key[1:])
            prompt = [*self.sink, *ids] if standalone and self.sink else ids
            self._encoding[key] = GenerationRequest(prompt, max_new_tokens=0, keep_kv=True)
        return self._encoding[key]

    def _keep_template(self, key: Template, generation) -> None:
        self._encoding.pop(key, None)
        if key in self._templates:  # another turn waiting on the same row stored it already
            return
        standalone = key[0]
        segment = generation.prompt_kv
        if standalone and self.sink:
            segment = segment.slice(len(self.sink))
        self.stats.template_s += generation.prefill_s  # its share of the batched pass it ran in
        self.stats.template_tokens += len(key) - 1
        self._templates[key] = segment
        if len(self._templates) > self.config.templates:
            self._templates.popitem(last=False)

    def templates(self, wanted: Sequence[Template]) -> Preparation:
        """The template segments of `wanted` keys, encoding the missing ones in prefill-only rows first."""
        missing = list(dict.fromkeys(key for key in wanted if self.template(key[1:], key[0]) is None))
        if missing:
            generations = yield [self._template_row(key) for key in missing]
            for key, generation in zip(missing, generations, strict=True):
                self._keep_template(key, generation)
        found = {key: self.template(key[1:], key[0]) for key in dict.fromkeys(wanted)}
        return [found[key] for key in wanted]

    # --- assembling and learning -------------------------------------------------------------------------------

    def _middle(self, pieces: Sequence[Piece]) -> list[tuple[Hashable, KVSegment | None]]:
        """(anchor key, donor cache) of each middle piece; glue without a donor uses its standalone template
        (None if it was never encoded); the receiver's own text is (None, None)."""
        return [
            (None, None)
            if piece.own
            else (piece.key, piece.source)
            if piece.source is not None
            else (("glue", piece.token_ids), self.template(piece.token_ids, True))
            for piece in pieces[1:-1]
        ]

    def _moved(self, receiver: Hashable, key: Hashable, source: KVSegment, weight: torch.Tensor) -> Placement:
        """Writes `source` re-rotated into its slots, plus its anchors' weighted offsets."""

        def place(keys: torch.Tensor, values: torch.Tensor, position: int) -> None:
            self.rope.rotate_into(source.keys, position - source.start, keys)
            values.copy_(source.values)
            if self.config.correct:
                kept = torch.where(weight >= MIN_WEIGHT, weight, 0)
                self.anchors.apply((receiver, key), kept / kept.sum(), keys, values)

        return place

    def assemble(self, receiver: Hashable, pieces: Sequence[Piece], spare: int = 256) -> Preparation:
        """The receiver's prompt cache up to its tail (a preparation: it yields the template and own-text rows
        it needs), or None when a piece must be prefilled densely first.

        The cache is written once, in place: each source moved straight into its slot of one buffer, its
        anchors' offsets added there. `spare` positions are left free after the tail for decoding.
        """
        if len(pieces) < 3:
            raise ValueError("a reusable prompt has a head, at least one middle piece and a tail")
        started = time.perf_counter()
        self.stats.calls += 1
        self.stats.prompt_tokens += sum(len(p.token_ids) for p in pieces)
        glue = [(True, *p.token_ids) for p in pieces[1:-1] if not p.own and p.source is None]
        yield from self.templates(glue)
        middle = self._middle(pieces)
        weights = [
            None if key is None else self.anchors.weights((receiver, key), describe(source.keys))
            for key, source in middle
        ]
        if any(w is None for w, (key, _) in zip(weights, middle, strict=True) if key is not None):
            return None
        (head,) = yield from self.templates([(False, *pieces[0].token_ids)])
        placements: list[Placement | None] = [_copied(head)]
        for (key, source), weight in zip(middle, weights, strict=True):
            placements.append(None if key is None else self._moved(receiver, key, source, weight))
        assembly = yield from assemble(pieces, [*placements, None], head, spare)
        self.stats.reused_calls += 1
        self.stats.reused_tokens += assembly.reused_tokens
        assembly.seconds = time.perf_counter() - started
        return assembly

    def learn(self, receiver: Hashable, pieces: Sequence[Piece], dense: KVSegment) -> None:
        """Add one anchor per middle piece from the receiver's dense prompt cache (positions from 0). Glue whose
        template no `assemble` has encoded yet teaches nothing (the next `assemble` encodes it)."""
        position = len(pieces[0].token_ids)
        for piece, (key, source) in zip(pieces[1:-1], self._middle(pieces), strict=True):
            length = len(piece.token_ids)
            if key is not None and source is not None:
                moved = self.rope.move(source, position)
                real = dense.slice(position, position + length)
                self.anchors.add(
                    (receiver, key), describe(source.keys), real.keys - moved.keys, real.values - moved.values
                )
            position += length


def _copied(segment: KVSegment) -> Placement:
    """Writes `segment` into its slots as it is (a template at the position it was encoded at)."""

    def place(keys: torch.Tensor, values: torch.Tensor, position: int) -> None:
        keys.copy_(segment.keys)
        values.copy_(segment.values)

    return place
