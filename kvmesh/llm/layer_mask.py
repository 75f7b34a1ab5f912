"""Attention that lets some layers skip some cached columns: the engine's side of selective KV sharing.

A `kv-select` receiver's cache holds a sender's context in every layer, but only the selected layers may read
it; in the others those columns must be invisible, as if the cache held only the first (sink) token there.
transformers builds one attention mask per layer type, not per layer, so we register attention functions that
take one more keyword, `hidden` ({layer index: (B, K) bool, True = this layer of this row must not read the
column}), fold it into the mask they receive and call transformers' own SDPA or eager attention. Without
`hidden` they are that attention, unchanged.

Causality holds in every layer: hiding columns only removes keys from what a query may read, and a mask the
model left out (SDPA's `is_causal` fast path) is rebuilt as the causal mask first.

A float entry in `hidden` is a soft version of the same: an additive bias on the layer's logits for those
columns (log g scales the attention a column gets by g before the softmax renormalises; -inf hides it). c2c's
training reads its per-layer gates through it, so the gate it learns is the mask the channel applies.

Caveat: flash-attention and other kernels that take no dense mask are not wrapped; `use_layer_masks` leaves such
models as they are and says so when a hidden column is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "kvmesh-layer-mask-"


def _eager(module, query, key, value, attention_mask, **kwargs):
    """The eager attention of the model's own family (transformers defines one per modeling file)."""
    return sys.modules[type(module).__module__].eager_attention_forward(
        module, query, key, value, attention_mask, **kwargs
    )


def hide_columns(
    attention_mask: torch.Tensor | None, hidden: torch.Tensor, query_length: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`attention_mask` (B, 1, Q, K) bool or additive float, or None for causal) with `hidden` (B, K) removed
    (bool), or added to the logits (float: an additive bias per column, differentiable, in `dtype`: the
    queries', which SDPA requires of a float mask)."""
    rows, keys = hidden.shape[0], hidden.shape[1]
    if attention_mask is None:
        query_positions = torch.arange(keys - query_length, keys, device=hidden.device)[:, None]
        causal = torch.arange(keys, device=hidden.device)[None, :] <= query_positions
        attention_mask = causal[None, None].expand(rows, 1, query_length, keys)
    hide = hidden[:, None, None, : attention_mask.shape[-1]]
    if hide.is_floating_point():
        dtype = dtype or hide.dtype
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=hide.device).masked_fill(
                ~attention_mask, torch.finfo(dtype).min
            )
        return attention_mask.to(dtype) + hide.to(dtype)
    if attention_mask.dtype == torch.bool:
        return attention_mask & ~hide
    return attention_mask.masked_fill(hide, torch.finfo(attention_mask.dtype).min)


def _masked(attention: Callable) -> Callable:
    def forward(module, query, key, value, attention_mask, hidden=None, **kwargs):
        if hidden is not None and (columns := hidden.get(module.layer_idx)) is not None:
            attention_mask = hide_columns(attention_mask, columns, query.shape[2], query.dtype)
        return attention(module, query, key, value, attention_mask, **kwargs)

    return forward


WRAPPED = {"sdpa": sdpa_attention_forward, "eager": _eager}
for _name, _attention in WRAPPED.items():
    AttentionInterface.register(PREFIX + _name, _masked(_attention))
    # transformers builds no mask at all for an attention name it has no mask function for: give it the wrapped one's
    AttentionMaskInterface.register(PREFIX + _name, ALL_MASK_ATTENTION_FUNCTIONS[_name])


def use_layer_masks(model) -> bool:
    """Switch `model` to the wrapping attention of its own implementation; False when it has none to wrap."""
    current = model.config._attn_implementation
    if current.startswith(PREFIX):
        return True
    if current not in WRAPPED:
        return False
    model.set_attn_implementation(PREFIX + current)
    return PREFIX + current in ALL_ATTENTION_FUNCTIONS
