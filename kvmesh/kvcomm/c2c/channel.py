"""The `c2c` channel (C2C): a receiver reads a sender on ANOTHER model through the sender's cache, mapped into
the receiver's KV format by a fitted mapper (`kvmesh c2c fit|train`).

    sender's turn     prefills its prompt and keeps that prompt's cache (a sender only c2c or kv-select
                      edges read generates nothing)
    mapping           keys lose the sender's rotary embedding (`LayerRope.strip`), the mapper turns the sender's
                      position-free keys and values into the receiver's format (`KVMapper.transfer`), and the
                      keys get the receiver's rotation at positions 0 .. C - 1: nothing is added to rotated keys
    receiver's turn   its cache starts with the mapped context, which the layers the mapper feeds read
                      (`KVMapper.open_layers`; a trained mapper's closed gates hide it from the others, as a
                      `LatentSpan`, so those read the receiver's own prompt alone); its own prompt is prefilled
                      after it (context transfer: the receiver never read that text itself, and the two models
                      share no tokenizer)

Gemma 3's sliding-window layers keep at most 511 positions: a sender prompt longer than that is refused with
`ContextTooLongError` unless the mapper reads only the sender's full-attention layers (`full_attention_only`).

Usage: the sender's prefill is its own input; the receiver's input tokens include the C mapped positions
(counted as `cache_read`, in the sender's tokens: there is no receiver text for them), and each message
reports the bytes of mapped KV it moved.

`mode="fusion"` is C2C's own mode instead (`kvmesh.kvcomm.c2c.task_fusion`): no context is read; the receiver's cache of
the task is fused with the sender's cache of the same text, aligned by character offsets, in the layers the mapper
feeds (the others keep the receiver's rows bit for bit). A mapper serves only the modes it was made for
(`KVMapper.modes`): a fuser trained for transfer is refused in fusion and the other way round.

Before use, the mapper's recorded held-out quality must pass `check_recorded` (a fitted mapper: attention-output
cosine at least `threshold` and `margin` above a wrong context and a shuffled mapping; a trained one: validation
loss `loss_margin` below reading nothing and below a sender that read another task's notes), or the channel
refuses it with `MapperQualityError`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kvmesh.kvcomm.assembly import TASK, Assembly, Piece, Preparation
from kvmesh.kvcomm.c2c.capture import check_length
from kvmesh.kvcomm.c2c.mappers.base import (
    FUSION,
    TRANSFER,
    KVMapper,
    MapperError,
    check_models,
    load_config,
    load_mapper,
)
from kvmesh.kvcomm.c2c.mappers.quality import MapperQualityError, check_recorded
from kvmesh.kvcomm.c2c.task_fusion import FUSE, fuse_task, fusing_pieces, task_rows
from kvmesh.kvcomm.channel import Cached, Channel, ChannelNotAvailableError, Endpoint, Keep, TurnView, reply_key
from kvmesh.kvcomm.latent import join_contexts, latent_layout, ready
from kvmesh.kvcomm.rope import LayerRope, Rope
from kvmesh.llm.base import Generation, KVModel, LanguageModel, LatentSpan
from kvmesh.llm.segment import KVSegment

NAME = "c2c"


@dataclass
class C2CConfig:
    """Settings of c2c edges.

    Args:
        mapper: a mapper folder (`mapper.json` + `mapper.safetensors`, from `kvmesh c2c fit|train`).
        threshold: a fitted mapper's least held-out attention-output cosine (None: QUALITY_THRESHOLD, 0.6).
        margin: how far a fitted mapper's attention-output cosine must exceed its better control's (a wrong
            context, a shuffled mapping; None: QUALITY_MARGIN, 0.02).
        loss_margin: how far, in nats, a trained mapper's validation loss must sit below the receiver reading
            nothing and below a sender that read another task's notes (None: LOSS_MARGIN, 0.05).
        mode: "transfer" (the sender's context, mapped, read in front of the receiver's prompt) or "fusion"
            (the receiver's cache of the task fused with the sender's cache of it).
    """

    mapper: str | None = None
    threshold: float | None = None
    margin: float | None = None
    loss_margin: float | None = None
    mode: str = TRANSFER

    def __post_init__(self) -> None:
        if self.mode not in (TRANSFER, FUSION):
            raise ValueError(
                f"c2c mode must be {TRANSFER!r} (context transfer) or {FUSION!r} (fusion over the task's text), "
                f"got {self.mode!r}"
            )


def _same_model(spec: str, other: str) -> bool:
    """Whether two specs name one model (an alias or id as written, a folder wherever it is written from)."""
    paths = [Path(s).expanduser() for s in (spec, other)]
    return spec == other or (all(p.is_dir() for p in paths) and paths[0].resolve() == paths[1].resolve())


class C2CChannel(Channel):
    """Reads a sender's prompt cache mapped into the receiver's format; see the module docstring."""

    name = NAME
    summary = "a sender on another model, its cache mapped into the receiver's; needs a mapper: --c2c-mapper DIR"
    settings_class = C2CConfig
    reads_reply = False  # the receiver reads the sender's prompt cache, not its reply
    carries_caches = True

    def __init__(self, settings: C2CConfig | None = None) -> None:
        super().__init__(settings)
        if not self.config.mapper:
            raise ChannelNotAvailableError(
                "a c2c edge needs a mapper: --c2c-mapper DIR on the command line, Team(..., channels={'c2c': "
                "{'mapper': 'DIR'}}) or, in a team spec, channels: {c2c: {mapper: DIR}} (with each agent's model:), "
                "DIR from kvmesh c2c fit|train --sender S --receiver R --out DIR"
            )
        self.mapper: KVMapper = load_mapper(self.config.mapper)
        if self.config.mode not in self.mapper.modes:
            raise ChannelNotAvailableError(f"c2c mode {self.config.mode!r}: {self.mapper.wrong_mode(self.config.mode)}")
        self._open = self.mapper.open_layers()
        if not self._open:
            raise MapperQualityError(
                f"{self.config.mapper}: every gate of this {self.mapper.config.kind} mapper is closed, so it feeds no "
                "receiver layer and carries nothing; train it again (or use channel='text')"
            )
        self._check_quality()
        self._ropes: dict[int, LayerRope] = {}
        self._moves: dict[int, Rope] = {}
        self._receivers: dict[int, KVModel] = {}
        self.calls = self.mapped_tokens = self.moved_bytes = 0

    def _check_quality(self) -> None:
        try:
            check_recorded(self.mapper, self.config.threshold, self.config.margin, self.config.loss_margin)
        except MapperQualityError as error:
            raise MapperQualityError(f"{self.config.mapper}: {error}") from error

    def check(self, sender: Endpoint, receiver: Endpoint, where: str) -> None:
        try:
            check_models(load_config(self.config.mapper), sender.model_spec, receiver.model_spec)
        except MapperError as error:
            raise ChannelNotAvailableError(f"c2c {where}: {error}") from error

    def prepare(self, model: LanguageModel) -> None:
        if not isinstance(model, KVModel):
            raise ChannelNotAvailableError(f"{model.spec}: c2c needs a model in this process (a LocalLM)")
        if id(model) not in self._ropes:
            self._ropes[id(model)] = LayerRope.from_model(model.model)
            if _same_model(model.spec, self.mapper.config.receiver):
                self._moves[id(model)] = Rope.from_model(model.model)
                self._receivers[id(model)] = model

    def layout(
        self, model: LanguageModel, glue: str, content: str, cached: KVSegment | None, key: Hashable
    ) -> list[Piece]:
        """The sender's mapped context, read in front of the receiver's prompt (fusion: its task rows, no tokens);
        as text when none was kept."""
        if self.config.mode == FUSION and cached is not None:
            return [Piece(source=cached, key=key, kind=FUSE, channel=self.name)]
        return latent_layout(self.name, glue, content, cached, key)

    def place(self, model: LanguageModel, receiver: Hashable, pieces: Sequence[Piece]) -> Preparation | None:
        """The receiver's cache: the mapped contexts one after another, then its own prompt, prefilled after them
        (fusion: its prompt up to the task's end, the task's rows fused with the senders')."""
        if self.config.mode == FUSION:
            senders = fusing_pieces(pieces, self.name)
            if not senders or not self._open:  # nothing to fuse into: the receiver's cache as it is
                return None
            self.calls += 1
            self.mapped_tokens += sum(len(piece.source) for piece in senders)
            self.moved_bytes += self.kv_bytes(model, senders)
            return fuse_task(pieces, senders, self._ropes[id(model)], self.mapper, self._open)
        joined = join_contexts(pieces, self.name, self._moves[id(model)])
        if joined is None:
            return None
        self.calls += 1
        self.mapped_tokens += len(joined.context)
        self.moved_bytes += self.kv_bytes(model, joined.latent)
        assembly = Assembly.of(joined.context, joined.rest)
        if len(self._open) < self.mapper.config.receiver_geometry.layers:  # closed layers never see the context
            assembly.latent = LatentSpan(0, len(joined.context), frozenset(self._open))
        return ready(assembly)

    def kv_bytes(self, model: LanguageModel, pieces: Sequence[Piece]) -> int:
        """Bytes one message writes into the receiver's cache, in the receiver's own format: each piece's tokens in
        the layers the mapper feeds, keys and values, at the receiver's dtype. The same unit in both modes:
        transfer's pieces are receiver-format already, fusion's hold the sender's rows (another shape), which
        the receiver never stores as they are."""
        tokens = sum(len(piece.source) for piece in pieces if piece.source is not None)
        itemsize = next(model.model.parameters()).dtype.itemsize  # a KVModel: `prepare` refuses any other
        return tokens * len(self._open) * 2 * self.mapper.config.receiver_geometry.width * itemsize

    def keeps(self, turn: TurnView) -> Keep:
        """A turn read over c2c keeps its prompt's cache: that is the context its receivers read, mapped."""
        return Keep(prompt=self.name in turn.read_over)

    @torch.no_grad()
    def learn(self, turn: TurnView, generation: Generation) -> None:
        """Map the sender's prompt cache into the receiver's format once, for every receiver of it."""
        if self.name not in turn.read_over or generation.prompt_kv is None:
            return
        config, kv = self.mapper.config, generation.prompt_kv
        kv = kv.slice(0, generation.prompt_tokens)  # the prompt's rows: latent thoughts (kv-select's) are not mapped
        check_length(turn.model.model.config, len(kv), sorted(set(config.layer_map)))
        sender_rope = self._ropes[id(turn.model)]
        keys = sender_rope.strip(kv.keys.float(), torch.arange(kv.start, kv.end))
        if self.config.mode == FUSION:
            self._learn_task(turn, keys, kv.values.float())
            return
        mapped_keys, mapped_values = self.mapper.transfer(keys, kv.values.float())
        receiver_rope = self._receiver_rope()
        mapped_keys = receiver_rope.apply(mapped_keys, torch.arange(len(kv)))
        segment = KVSegment(mapped_keys.contiguous(), mapped_values.contiguous(), 0, kv.token_ids)
        turn.store[reply_key(*turn.receiver, self.name)] = Cached(self.name, segment)

    def _learn_task(self, turn: TurnView, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Fusion: keep the sender's position-free rows of the task, laid out on the receiver's task tokens."""
        start, end = turn.task_span
        (text,) = [piece.text for piece in turn.pieces if piece.kind == TASK]
        ids = [t for piece in turn.pieces for t in piece.token_ids][start:end]
        receiver = self._receiver()
        rows = task_rows(
            text, ids, keys[:, :, start:end], values[:, :, start:end], turn.model.tokenizer, receiver.tokenizer
        )
        turn.store[reply_key(*turn.receiver, self.name)] = Cached(self.name, rows)

    def _receiver(self) -> KVModel:
        if not self._receivers:
            raise ChannelNotAvailableError(f"c2c: the receiver {self.mapper.config.receiver} was not prepared")
        return next(iter(self._receivers.values()))

    def _receiver_rope(self) -> LayerRope:
        return self._ropes[id(self._receiver())]

    def stats(self) -> dict:
        if not self.calls:
            return {}
        return {
            "calls": self.calls,
            "mapped_tokens": self.mapped_tokens,
            "kv_bytes": self.moved_bytes,
            "mode": self.config.mode,
            "mapper": {"path": self.config.mapper, "kind": self.mapper.config.kind, **self.mapper.config.quality},
        }
