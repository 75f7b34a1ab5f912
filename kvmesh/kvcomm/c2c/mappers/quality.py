"""Judging a cross-model mapper the way the receiver will use it: attention outputs over mapped caches.

    quality = mapping_quality(mapper, sender, receiver, [(context, probe), ...])
    quality.per_layer      # (Lr,) mean cosine, per receiver layer
    check_quality(mapper, sender, receiver, texts, threshold=QUALITY_THRESHOLD)   # MapperQualityError if worse

For each (context, probe): the receiver reads `context + probe` once and we keep, per layer, its position-free
queries of the probe tokens and its real cache of the context. The sender reads the context alone; its
position-free cache is mapped (`mapper.transfer`). Then in every receiver layer the probe queries attend over
- the real cache of the context: the receiver's own rows at 0 .. Sr - 1 (queries at Sr, Sr + 1, ...);
- the mapped cache: the mapped sender rows with the receiver's RoPE applied at 0 .. Ss - 1 (the same queries
  moved to Ss, Ss + 1, ..., so the probe is as far from the context in both);
and the two attention outputs (all query heads of a probe token, flattened) are compared by cosine. Two controls
are measured the same way, with the same queries against the same real outputs:
- wrong context: the receiver's own real cache of ANOTHER text's context (the next one in the list);
- shuffled: the mapper applied to the sender's cache of that other context.
A mapper that carries what its context says scores well above both; one that writes plausible rows whatever the
sender read (the receiver's mean rows, say) scores no better than they do, since attention outputs of any real
context share most of their direction. `check_quality` passes a mapper only when its mean reaches the threshold
AND beats the higher control's mean by `margin`. Each layer
is judged on its own (the same queries in both), so a bad layer cannot hide behind a good earlier one, and only
the context is attended to: the probe's own rows, the same on both sides, would flatter any mapper (with them,
a mapper that writes all zeros scores 0.71 on the real pair). Attention-output cosine on held-out texts
predicts a mapper's downstream quality; key reconstruction error does not (REFERENCES.md, "the 2026 field").

Measured on the real pair (gemma3-270m -> smollm2-135m, 16 InfoQA validation texts, probe = the question):
see QUALITY_THRESHOLD and QUALITY_MARGIN.

Caveat: a mapper is judged on the receiver's queries of the probe, so pick probes like the receiver's real
prompts (the question that follows the context).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kvmesh.kvcomm.c2c.align import encode_with_offsets
from kvmesh.kvcomm.c2c.capture import capture, hf_model, position_free_kv
from kvmesh.kvcomm.rope import LayerRope, layer_types

if TYPE_CHECKING:
    from kvmesh.kvcomm.c2c.mappers.base import KVMapper

# Measured on gemma3-270m -> smollm2-135m, 16 InfoQA validation texts (probe: the question): a ridge mapper fitted
# on 30 train texts scores a mean of 0.90 (worst layer 0.68), on 200 texts (`kvmesh c2c fit`) 0.913 (worst 0.77); a
# random linear map -0.01, all-zero keys and values 0.00, the receiver's mean rows alone (ridge at λ = 1e6) 0.24.
# The default sits well between the baselines and ridge.
QUALITY_THRESHOLD = 0.6
# A floor, set before any downstream measurement and not calibrated against accuracy: the ridge mapper above
# beats its better control (the wrong context, 0.888) by 0.026 and passes, yet earlier single-seed bench runs put
# its c2c accuracy below no communication. Passing says the mapping depends on its context, not that it helps.
QUALITY_MARGIN = 0.02
# A trained mapper is judged on what it was trained for: the receiver's loss on validation replies that chose
# nothing, with the mapper (gates hard), must beat reading nothing and reading a sender that read another task's
# notes by this many nats (also a floor, not calibrated against accuracy).
LOSS_MARGIN = 0.05
DEFAULT_PROBE = "\nQuestion: What does the text above say?\nAnswer:"


class MapperQualityError(ValueError):
    """A mapper whose mapped caches the receiver reads too differently from its own."""


@dataclass(frozen=True)
class MappingQuality:
    """Per receiver layer, the mean cosine between attention outputs over mapped and real caches, and the same
    for the two controls (see the module docstring).

    Args:
        per_layer: (Lr,) cosines in [-1, 1], averaged over probe tokens and texts.
        texts: number of (context, probe) texts measured.
        probe_tokens: probe tokens measured, over all texts.
        wrong_context: (Lr,) the receiver's own cache of another text's context, against the real outputs.
        shuffled: (Lr,) the mapper on another text's context, against the real outputs.
    """

    per_layer: tuple[float, ...]
    texts: int
    probe_tokens: int
    wrong_context: tuple[float, ...] = ()
    shuffled: tuple[float, ...] = ()

    @property
    def mean(self) -> float:
        return sum(self.per_layer) / len(self.per_layer)

    @property
    def control(self) -> float | None:
        """The higher control's mean (None: no controls were measured)."""
        if not self.wrong_context or not self.shuffled:
            return None
        return max(sum(c) / len(c) for c in (self.wrong_context, self.shuffled))

    @property
    def worst(self) -> tuple[int, float]:
        layer = min(range(len(self.per_layer)), key=self.per_layer.__getitem__)
        return layer, self.per_layer[layer]

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "per_layer": list(self.per_layer),
            "texts": self.texts,
            "probe_tokens": self.probe_tokens,
            "wrong_context": list(self.wrong_context),
            "shuffled": list(self.shuffled),
            "control": self.control,
        }

    @classmethod
    def from_dict(cls, record: dict) -> MappingQuality:
        """A quality recorded by `to_dict` (records from before the controls have none)."""
        controls = (tuple(record.get(name) or ()) for name in ("wrong_context", "shuffled"))
        return cls(tuple(record["per_layer"]), record["texts"], record["probe_tokens"], *controls)

    def describe(self) -> str:
        layers = ", ".join(f"{i}: {c:.2f}" for i, c in enumerate(self.per_layer))
        controls = ""
        if self.control is not None:
            wrong, shuffled = (sum(c) / len(c) for c in (self.wrong_context, self.shuffled))
            controls = f"; controls: wrong context {wrong:.3f}, shuffled {shuffled:.3f}"
        return (
            f"mean {self.mean:.3f} over {self.texts} texts ({self.probe_tokens} probe tokens){controls}; "
            f"per layer {layers}"
        )


def attention_outputs(
    queries: torch.Tensor,
    query_positions: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_positions: torch.Tensor,
    scaling: Sequence[float],
    windows: Sequence[int | None],
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of rotated `queries` (L, Hq, P, D) at `query_positions` (P,) over rotated `keys`,
    `values` (L, H, T, D) at `key_positions` (T,), per layer with its own scaling and sliding window (None: all).
    Returns (L, P, Hq · D)."""
    groups = queries.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    logits = queries @ keys.transpose(-1, -2) * torch.tensor(scaling, dtype=queries.dtype)[:, None, None, None]
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    distance = query_positions[:, None] - key_positions[None, :]  # (P, T)
    visible = torch.stack([(distance >= 0) & (distance < (w or 2**62)) for w in windows])  # (L, P, T)
    logits = logits.masked_fill(~visible[:, None], float("-inf"))
    out = torch.softmax(logits, dim=-1) @ values  # (L, Hq, P, D)
    return out.permute(0, 2, 1, 3).flatten(2)


def _receiver_layout(model) -> tuple[list[float], list[int | None], float | None]:
    model = hf_model(model)
    attention = [layer.self_attn for layer in model.model.layers]
    types = layer_types(model.config)
    window = getattr(model.config, "sliding_window", None)
    windows = [window if kind == "sliding_attention" else None for kind in types]
    return [float(a.scaling) for a in attention], windows, getattr(model.config, "attn_logit_softcapping", None)


def _split(text: str | tuple[str, str]) -> tuple[str, str]:
    return (text, DEFAULT_PROBE) if isinstance(text, str) else text


@dataclass
class _Read:
    """What one (context, probe) text gives: the receiver's probe queries and real cache of the context, and the
    sender's cache of the context, mapped."""

    queries: torch.Tensor  # (L, Hq, P, D), position-free
    probe: int  # P
    real: tuple[torch.Tensor, torch.Tensor]  # the receiver's own keys (rotated at 0 .. Sr - 1) and values
    mapped: tuple[torch.Tensor, torch.Tensor]  # the mapped keys (rotated at 0 .. Ss - 1) and values


@torch.no_grad()
def mapping_quality(mapper: KVMapper, sender, receiver, texts: Sequence[str | tuple[str, str]]) -> MappingQuality:
    """Attention-output cosine of mapped against real caches, per receiver layer, with its two controls (see the
    module docstring; the controls need at least two texts).

    sender, receiver: LocalLMs (their tokenizers tokenize the texts);
    texts: (context, probe) pairs, or contexts alone (the probe is then DEFAULT_PROBE).
    """
    if not texts:
        raise ValueError("mapping_quality needs at least one text")
    sender_rope, receiver_rope = LayerRope.from_model(sender), LayerRope.from_model(receiver)
    layout = _receiver_layout(receiver)
    reads = sorted(set(mapper.config.layer_map))
    found = []
    for text in texts:
        context, probe = _split(text)
        sender_ids, _ = encode_with_offsets(sender.tokenizer, context)
        ids, spans = encode_with_offsets(receiver.tokenizer, context + probe)
        start = next((i for i, (lo, hi) in enumerate(spans) if lo >= len(context) and hi > lo), len(ids))
        if start >= len(ids):
            raise ValueError(f"the probe {probe!r} adds no receiver tokens after its context")
        run = capture(receiver, ids, queries_from=start, rope=receiver_rope)
        sender_keys, sender_values = position_free_kv(sender, sender_ids, layers=reads, rope=sender_rope)
        mapped_keys, mapped_values = (kv.float() for kv in mapper.transfer(sender_keys, sender_values))
        real = (receiver_rope.apply(run.keys[:, :, :start]), run.values[:, :, :start])
        found.append(_Read(run.queries, len(ids) - start, real, (receiver_rope.apply(mapped_keys), mapped_values)))
    zeros = torch.zeros(len(layout[0]), dtype=torch.float64)
    totals = {"mapped": zeros.clone(), "wrong_context": zeros.clone(), "shuffled": zeros.clone()}
    controlled = len(found) > 1
    for index, read in enumerate(found):
        reference = _outputs(read, read.real, receiver_rope, layout)
        other = found[(index + 1) % len(found)]
        candidates = {"mapped": read.mapped}
        if controlled:
            candidates |= {"wrong_context": other.real, "shuffled": other.mapped}
        for name, cache in candidates.items():
            totals[name] += F.cosine_similarity(reference, _outputs(read, cache, receiver_rope, layout), dim=-1).sum(-1)
    tokens = sum(read.probe for read in found)
    per_layer = {name: tuple((total / tokens).tolist()) for name, total in totals.items()}
    controls = (per_layer["wrong_context"], per_layer["shuffled"]) if controlled else ((), ())
    return MappingQuality(per_layer["mapped"], len(found), tokens, *controls)


def _outputs(read: _Read, cache: tuple[torch.Tensor, torch.Tensor], rope: LayerRope, layout) -> torch.Tensor:
    """The probe's attention outputs over `cache` (rotated keys at 0 .. C - 1, values), its queries placed right
    after it: (L, P, Hq · D)."""
    keys, values = cache
    length = keys.shape[2]
    positions = torch.arange(length, length + read.probe)
    queries = rope.apply(read.queries, positions)
    return attention_outputs(queries, positions, keys, values.float(), torch.arange(length), *layout)


def check_quality(
    mapper: KVMapper,
    sender,
    receiver,
    texts: Sequence[str | tuple[str, str]],
    threshold: float | None = QUALITY_THRESHOLD,
    quality: MappingQuality | None = None,
    margin: float | None = QUALITY_MARGIN,
) -> MappingQuality:
    """`mapping_quality` (or the given `quality`), raising `MapperQualityError` when its mean is below
    `threshold`, or does not beat its higher control by `margin` (None: the controls are not checked); returns it
    otherwise."""
    quality = quality or mapping_quality(mapper, sender, receiver, texts)
    if not all(math.isfinite(value) for value in (quality.mean, *quality.wrong_context, *quality.shuffled)):
        raise MapperQualityError(
            f"the {mapper.config.kind} mapper {mapper.config.direction} records a quality that is not a number "
            f"({quality.describe()}); fit it again"
        )
    if threshold is not None and quality.mean < threshold:
        layer, worst = quality.worst
        raise MapperQualityError(
            f"the {mapper.config.kind} mapper {mapper.config.direction} gives receiver attention outputs too unlike "
            f"its own: mean cosine {quality.mean:.3f} < threshold {threshold:.3f} (worst layer {layer}: "
            f"{worst:.3f}); {quality.describe()}. Fit it on more texts (--texts), check that it was fitted for this "
            "pair and direction, or train a fuser (kvmesh c2c train)"
        )
    if margin is not None and quality.control is None:
        raise MapperQualityError(
            f"the {mapper.config.kind} mapper {mapper.config.direction} records no control measurements (a "
            "wrong context, a shuffled mapping), so nothing shows it carries what its context says; fit or "
            "train it again with this kvmesh (kvmesh c2c fit|train), which measures them"
        )
    if margin is not None and quality.mean - quality.control < margin:
        raise MapperQualityError(
            f"the {mapper.config.kind} mapper {mapper.config.direction} carries too little of its context: mean "
            f"cosine {quality.mean:.3f} against {quality.control:.3f} for the better control, a margin of "
            f"{quality.mean - quality.control:.3f} < {margin:.3f}; {quality.describe()}. A receiver reading it "
            "learns about as much as from another task's notes; fit it on more texts or train a fuser"
        )
    return quality


def check_recorded(
    mapper: KVMapper,
    threshold: float | None = None,
    margin: float | None = None,
    loss_margin: float | None = None,
) -> None:
    """Judge a mapper by the quality its folder records, raising `MapperQualityError` when it falls short.

    A trained mapper records its validation losses (`validation_loss`, `no_context_loss`, and `shuffled_loss`:
    the sender having read another task's notes): it must beat each alternative by `loss_margin` nats
    (default LOSS_MARGIN). A fitted one records its attention-output quality with controls (`mapping_quality`):
    it must reach `threshold` and beat its controls by `margin` in cosine (defaults QUALITY_THRESHOLD,
    QUALITY_MARGIN). Each margin is in its own measure's units, so neither setting is read for the other kind.
    """
    record, name = mapper.config.quality, f"the {mapper.config.kind} mapper {mapper.config.direction}"
    if "validation_loss" in record:
        least = LOSS_MARGIN if loss_margin is None else loss_margin
        loss = record["validation_loss"]
        losses = [record[key] for key in ("validation_loss", "no_context_loss", "shuffled_loss") if key in record]
        if not all(math.isfinite(value) for value in losses):
            raise MapperQualityError(
                f"{name} records a validation loss that is not a number ({losses}); train it again"
            )
        for label, key in (
            ("reading nothing", "no_context_loss"),
            ("its sender read another task's notes", "shuffled_loss"),
        ):
            if key in record and loss > record[key] - least:
                raise MapperQualityError(
                    f"{name} does not help its receiver enough: validation loss {loss:.3f} against "
                    f"{record[key]:.3f} when {label} (needs {least:.3f} less); train it longer or on more texts"
                )
        return
    if "per_layer" not in record:
        raise MapperQualityError(
            f"{name} records no held-out quality check; fit it with kvmesh c2c fit or train it with kvmesh c2c train "
            "(which measure it on validation texts) before using it"
        )
    check_quality(
        mapper,
        None,
        None,
        (),
        QUALITY_THRESHOLD if threshold is None else threshold,
        MappingQuality.from_dict(record),
        QUALITY_MARGIN if margin is None else margin,
    )
