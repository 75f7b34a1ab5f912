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
and the two attention outputs (all query heads of a probe token, flattened) are compared by cosine. Each layer
is judged on its own (the same queries in both), so a bad layer cannot hide behind a good earlier one, and only
the context is attended to: the probe's own rows, the same on both sides, would flatter any mapper (with them,
a mapper that writes all zeros scores 0.71 on the real pair). Attention-output cosine on held-out texts
predicts a mapper's downstream quality; key reconstruction error does not (REFERENCES.md, "the 2026 field").

Measured on the real pair (gemma3-270m -> smollm2-135m, 16 InfoQA validation texts, probe = the question):
see QUALITY_THRESHOLD.

Caveat: a mapper is judged on the receiver's queries of the probe, so pick probes like the receiver's real
prompts (the question that follows the context).
"""

from __future__ import annotations

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
DEFAULT_PROBE = "\nQuestion: What does the text above say?\nAnswer:"


class MapperQualityError(ValueError):
    """A mapper whose mapped caches the receiver reads too differently from its own."""


@dataclass(frozen=True)
class MappingQuality:
    """Per receiver layer, the mean cosine between attention outputs over mapped and real caches.

    Args:
        per_layer: (Lr,) cosines in [-1, 1], averaged over probe tokens and texts.
        texts: number of (context, probe) texts measured.
        probe_tokens: probe tokens measured, over all texts.
    """

    per_layer: tuple[float, ...]
    texts: int
    probe_tokens: int

    @property
    def mean(self) -> float:
        return sum(self.per_layer) / len(self.per_layer)

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
        }

    def describe(self) -> str:
        layers = ", ".join(f"{i}: {c:.2f}" for i, c in enumerate(self.per_layer))
        return f"mean {self.mean:.3f} over {self.texts} texts ({self.probe_tokens} probe tokens); per layer {layers}"


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


@torch.no_grad()
def mapping_quality(mapper: KVMapper, sender, receiver, texts: Sequence[str | tuple[str, str]]) -> MappingQuality:
    """Attention-output cosine of mapped against real caches, per receiver layer (see the module docstring).

    sender, receiver: LocalLMs (their tokenizers tokenize the texts);
    texts: (context, probe) pairs, or contexts alone (the probe is then DEFAULT_PROBE).
    """
    if not texts:
        raise ValueError("mapping_quality needs at least one text")
    sender_rope, receiver_rope = LayerRope.from_model(sender), LayerRope.from_model(receiver)
    scaling, windows, softcap = _receiver_layout(receiver)
    reads = sorted(set(mapper.config.layer_map))
    totals = torch.zeros(len(scaling), dtype=torch.float64)
    tokens = 0
    for text in texts:
        context, probe = _split(text)
        sender_ids, _ = encode_with_offsets(sender.tokenizer, context)
        ids, spans = encode_with_offsets(receiver.tokenizer, context + probe)
        start = next((i for i, (lo, hi) in enumerate(spans) if lo >= len(context) and hi > lo), len(ids))
        if start >= len(ids):
            raise ValueError(f"the probe {probe!r} adds no receiver tokens after its context")
        run = capture(receiver, ids, queries_from=start, rope=receiver_rope)
        probe_count, probe_positions = len(ids) - start, torch.arange(start, len(ids))
        real = attention_outputs(
            receiver_rope.apply(run.queries, probe_positions),
            probe_positions,
            receiver_rope.apply(run.keys[:, :, :start]),
            run.values[:, :, :start],
            torch.arange(start),
            scaling,
            windows,
            softcap,
        )
        sender_keys, sender_values = position_free_kv(sender, sender_ids, layers=reads, rope=sender_rope)
        mapped_keys, mapped_values = (kv.float() for kv in mapper.transfer(sender_keys, sender_values))
        moved = probe_positions - start + len(sender_ids)  # the probe as far from the mapped context
        mapped = attention_outputs(
            receiver_rope.apply(run.queries, moved),
            moved,
            receiver_rope.apply(mapped_keys),
            mapped_values,
            torch.arange(len(sender_ids)),
            scaling,
            windows,
            softcap,
        )
        totals += F.cosine_similarity(real, mapped, dim=-1).double().sum(-1)
        tokens += probe_count
    return MappingQuality(tuple((totals / tokens).tolist()), len(texts), tokens)


def check_quality(
    mapper: KVMapper,
    sender,
    receiver,
    texts: Sequence[str | tuple[str, str]],
    threshold: float = QUALITY_THRESHOLD,
    quality: MappingQuality | None = None,
) -> MappingQuality:
    """`mapping_quality` (or the given `quality`), raising `MapperQualityError` when its mean is below
    `threshold`; returns it otherwise."""
    quality = quality or mapping_quality(mapper, sender, receiver, texts)
    if quality.mean < threshold:
        layer, worst = quality.worst
        raise MapperQualityError(
            f"the {mapper.config.kind} mapper {mapper.config.direction} gives receiver attention outputs too unlike "
            f"its own: mean cosine {quality.mean:.3f} < threshold {threshold:.3f} (worst layer {layer}: "
            f"{worst:.3f}); {quality.describe()}. Fit it on more texts (--texts), check that it was fitted for this "
            "pair and direction, or train a fuser (kvmesh c2c train)"
        )
    return quality
