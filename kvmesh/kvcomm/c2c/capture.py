"""Running a model over a text and keeping what a cross-model mapper reads: its position-free cache (and queries).

    keys, values = position_free_kv(model, ids)        # (L, H, S, D) each, RoPE stripped at 0 .. S - 1
    run = capture(model, ids, queries_from=S)           # also the position-free queries of tokens S .. end
    cache = prefix_cache(keys, values, config)          # a receiver cache holding (rotated) keys, differentiable

One direct forward of the decoder with `use_cache` (no LM head: Gemma 3's 262k-word head would be most of
the work); the cache is read through `kvmesh.llm.cache` and its keys made
position-free with `LayerRope.strip`. Queries come from a hook on each attention module: `q_proj` of the
layer's input (and `q_norm` where the model has one, as Gemma 3 does), before any rotation.

Sliding-window layers keep only the last `sliding_window - 1` positions in their cache (Gemma 3: 511), so a
text longer than that cannot be read from those layers. `position_free_kv` refuses it with
`ContextTooLongError` unless the caller reads only full-attention layers (`layers=`), whose caches keep every
position: a mapper whose layer map reads only full-attention layers works on longer contexts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from kvmesh.kvcomm.rope import LayerRope, layer_types
from kvmesh.llm.cache import cache_argument, new_cache, read_columns


class ContextTooLongError(ValueError):
    """A text is longer than a sliding-window layer that must be read keeps in its cache."""


def hf_model(model):
    """The transformers causal LM behind a LocalLM (or the model itself)."""
    return getattr(model, "model", model) if not hasattr(model, "config") else model


def window_limit(config, layers: Sequence[int] | None = None) -> int | None:
    """Most positions the sliding-window layers among `layers` (default all) keep, None when they keep all."""
    window = getattr(config, "sliding_window", None)
    types = layer_types(config)
    chosen = range(len(types)) if layers is None else layers
    if window is None or not any(types[layer] == "sliding_attention" for layer in chosen):
        return None
    return int(window) - 1


def check_length(config, length: int, layers: Sequence[int] | None = None) -> None:
    """Raise `ContextTooLongError` when `length` tokens do not fit the sliding layers among `layers`."""
    limit = window_limit(config, layers)
    if limit is not None and length > limit:
        raise ContextTooLongError(
            f"{config.model_type}: a context of {length} tokens does not fit its sliding-window layers, which "
            f"keep the last {limit} positions only; shorten the context to at most {limit} tokens, or use a "
            "mapper whose layer map reads only full-attention layers (full_attention_only)"
        )


@dataclass(frozen=True)
class Capture:
    """What one forward pass over `ids` left behind, position-free.

    keys, values: (L, H, S, D) the cache, keys with RoPE stripped at 0 .. S - 1; queries: (L, Hq, P, D) the
    position-free queries of tokens `queries_from` .. S - 1, or None.
    """

    ids: tuple[int, ...]
    keys: torch.Tensor
    values: torch.Tensor
    queries: torch.Tensor | None = None
    queries_from: int | None = None


def _attention_modules(model) -> list[torch.nn.Module]:
    layers = model.model.layers
    return [layer.self_attn for layer in layers]


def _query_hook(found: list, start: int):
    def hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)[:, start:]
        head_dim = module.head_dim
        queries = module.q_proj(hidden).view(hidden.shape[0], hidden.shape[1], -1, head_dim).transpose(1, 2)
        norm = getattr(module, "q_norm", None)
        found.append((norm(queries) if norm is not None else queries)[0])

    return hook


@torch.no_grad()
def capture(
    model,
    ids: Sequence[int],
    layers: Sequence[int] | None = None,
    queries_from: int | None = None,
    rope: LayerRope | None = None,
) -> Capture:
    """Forward `ids` (one row, positions 0 .. S - 1) and keep the position-free cache, and with `queries_from`
    the position-free queries of the tokens from there on.

    layers: the layers the caller will read; only those must fit a sliding window. All layers are returned; a
    sliding layer not read that kept fewer positions has zeros in front of the ones it kept.
    """
    model = hf_model(model)
    check_length(model.config, len(ids), layers)
    rope = rope or LayerRope.from_model(model)
    found: list[torch.Tensor] = []
    hooks = []
    if queries_from is not None:
        if not 0 <= queries_from < len(ids):
            raise ValueError(f"queries_from must be in [0, {len(ids)}), got {queries_from}")
        hooks = [
            module.register_forward_pre_hook(_query_hook(found, queries_from), with_kwargs=True)
            for module in _attention_modules(model)
        ]
    cache = new_cache(model.config)
    base = model.model  # the decoder without its LM head: the cache is all we keep
    try:
        tokens = torch.tensor([list(ids)], device=model.device)
        base(input_ids=tokens, use_cache=True, **cache_argument(base, cache))
    finally:
        for hook in hooks:
            hook.remove()
    keys, values = _stacked(cache, len(ids))
    queries = torch.stack(found).float() if found else None
    return Capture(tuple(ids), rope.strip(keys, None), values, queries, queries_from)


def _stacked(cache, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of every layer, (L, H, length, D) float32; short (sliding) layers zero-filled in front."""
    if all(layer.keys.shape[-2] == length for layer in cache.layers):
        keys, values = read_columns(cache, 0, 0, length)
        return keys.float(), values.float()
    first = cache.layers[0].keys
    keys = first.new_zeros((len(cache.layers), first.shape[1], length, first.shape[-1]), dtype=torch.float32)
    values = torch.zeros_like(keys)
    for index, layer in enumerate(cache.layers):
        kept = layer.keys.shape[-2]
        keys[index, :, length - kept :] = layer.keys[0].float()
        values[index, :, length - kept :] = layer.values[0].float()
    return keys, values


def position_free_kv(
    model, ids: Sequence[int], layers: Sequence[int] | None = None, rope: LayerRope | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's cache of `ids` with RoPE stripped: keys, values (L, H, S, D), float32 (see `capture`)."""
    run = capture(model, ids, layers, rope=rope)
    return run.keys, run.values


def prefix_cache(keys: torch.Tensor, values: torch.Tensor, config) -> DynamicCache:
    """A one-row cache holding `keys` and `values` (L, H, S, D), keys already rotated for their positions.

    Built with transformers' own layers, so gradients flow from a forward pass that reads it back into the
    tensors (a trained mapper's output). The forward that follows passes positions S, S + 1, ...
    """
    cache = DynamicCache(config=config)
    if len(cache.layers) != keys.shape[0]:
        raise ValueError(f"{keys.shape[0]} layers of keys for a model with {len(cache.layers)} layers")
    for index, (k, v) in enumerate(zip(keys, values, strict=True)):
        cache.update(k.unsqueeze(0), v.unsqueeze(0), index)
    return cache
