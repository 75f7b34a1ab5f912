"""Token selection for `kv-select`: which of a sender's context tokens a receiver reads at all.

    scores = context_token_scores(model, context, receiver_ids)     # (C,) attention mass per context token
    dropped = tokens_to_drop(scores, fraction=0.5)                   # positions no layer will read

A context token's score is the attention mass the receiver's own tokens put on it in the first layer, averaged
over query heads and receiver tokens: the receiver's queries there need only its token embeddings (one norm
and one projection, no forward pass), so scoring costs far less than the prefill it thins out. The first
(sink) token is always kept. Dropped tokens stay in the cache and are masked in every layer, so positions are
unchanged and the receiver reads exactly the kept tokens.

Caveat: first-layer attention sees tokens, not meaning (it matches names and words of the question, which is
what a receiver needs from InfoQA-style notes); a deeper layer would need the receiver's prefill to score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kvmesh.kvcomm.rope import LayerRope
from kvmesh.llm.segment import KVSegment


@torch.inference_mode()
def context_token_scores(model, context: KVSegment, receiver_ids: Sequence[int]) -> torch.Tensor:
    """(C,) first-layer attention mass of the receiver's tokens (positions C, C + 1, ...) on each context token.

    model: a transformers Llama-style causal LM; context: the sender's cache (L, H, C, D) at positions 0 .. C - 1.
    """
    if not receiver_ids:
        raise ValueError("scoring context tokens needs the receiver's own tokens")
    base = model.model
    attention = base.layers[0].self_attn
    hidden = base.layers[0].input_layernorm(base.embed_tokens(torch.tensor([list(receiver_ids)], device=model.device)))
    head_dim = context.keys.shape[-1]
    queries = attention.q_proj(hidden).view(1, len(receiver_ids), -1, head_dim).transpose(1, 2)  # (1, Hq, R, D)
    norm = getattr(attention, "q_norm", None)
    queries = norm(queries) if norm is not None else queries
    positions = torch.arange(len(context), len(context) + len(receiver_ids))
    queries = LayerRope.from_model(model).select([0]).apply(queries.to(context.keys.dtype), positions)[0]
    keys = context.keys[0]  # (H, C, D), rotated at 0 .. C - 1
    keys = keys.repeat_interleave(queries.shape[0] // keys.shape[0], dim=0)  # grouped-query heads share keys
    weights = torch.softmax(queries @ keys.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)  # (Hq, R, C)
    return weights.mean(dim=(0, 1)).float().cpu()


def tokens_to_drop(scores: torch.Tensor, fraction: float) -> frozenset[int]:
    """Positions of the least attended context tokens, keeping the top `fraction` of 1 .. C - 1 and the sink."""
    if not 0 < fraction <= 1:
        raise ValueError(f"token fraction must be in (0, 1], got {fraction}")
    candidates = scores.shape[0] - 1
    keep = max(1, math.ceil(fraction * candidates - 1e-9))
    order = sorted(range(1, scores.shape[0]), key=lambda p: (-float(scores[p]), p))  # ties: the earlier token
    return frozenset(order[keep:])
