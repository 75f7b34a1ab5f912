"""The one module that touches transformers' KV-cache objects (transformers 5.x `DynamicCache`).

Everything else in kvmesh asks this module for what it needs, so a change in transformers' cache layout is a
change here only. Tensors follow transformers' layout: keys and values are (B, H_kv, S, D) per layer.

Growing layers: transformers' `DynamicLayer` appends a token with `torch.cat`, copying the whole cache every
decode step (a quarter of a batch-16 SmolLM2 step at 500 positions). `GrowingLayer` keeps keys and values in a
buffer with spare capacity and writes new positions in place; `keys`/`values` are views of the filled part.

Caveat: models with sliding-window layers (Gemma 3) keep only a window of positions in those layers, so
caches of different lengths cannot be lined up position by position; `can_merge` says so and callers fall back
to one padded prefill (those models keep transformers' own layers).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

GROWTH = 256  # positions of spare capacity added when a buffer fills up


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer that appends in place. keys/values: (B, H, S, D) views of the buffers."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self.key_buffer = self.value_buffer = None

    def _reserve(self, batch: int, needed: int, like_k: torch.Tensor, like_v: torch.Tensor) -> None:
        capacity = 0 if self.key_buffer is None else self.key_buffer.shape[-2]
        if needed <= capacity:
            return
        size = needed + GROWTH
        key_buffer = like_k.new_empty((batch, like_k.shape[1], size, like_k.shape[-1]))
        value_buffer = like_v.new_empty((batch, like_v.shape[1], size, like_v.shape[-1]))
        if self.length:
            key_buffer[..., : self.length, :] = self.keys
            value_buffer[..., : self.length, :] = self.values
        self.key_buffer, self.value_buffer = key_buffer, value_buffer

    def _expose(self) -> None:
        self.keys = self.key_buffer[..., : self.length, :]
        self.values = self.value_buffer[..., : self.length, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self._reserve(key_states.shape[0], end, key_states, value_states)
        self.key_buffer[..., self.length : end, :] = key_states
        self.value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized and self.key_buffer is not None:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._expose()

    def drop_front(self, columns: int) -> None:
        self.key_buffer = self.key_buffer[..., columns:, :]
        self.value_buffer = self.value_buffer[..., columns:, :]
        self.length -= columns
        self._expose()


@functools.cache
def _cache_keyword(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model, cache: DynamicCache) -> dict:
    """The forward keyword for a cache: `cache` in newer transformers 5.x, `past_key_values` before it."""
    return {_cache_keyword(type(model)): cache}


def _has_sliding_layers(cache: DynamicCache) -> bool:
    return any(getattr(layer, "is_sliding", False) for layer in cache.layers)


def new_cache(config) -> DynamicCache:
    """An empty cache laid out for `config`: growing layers, or transformers' own for sliding-window models."""
    cache = DynamicCache(config=config)
    if not _has_sliding_layers(cache):
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def can_merge(config) -> bool:
    """True when every layer keeps all positions, so caches can be padded and stacked."""
    return not _has_sliding_layers(DynamicCache(config=config))


def stack_left_padded(caches: Sequence[DynamicCache], width: int, config) -> DynamicCache:
    """Stack caches along the batch, each left-padded with zeros to `width` positions.

    caches: each (B_i, H, S_i, D) per layer with S_i <= width. Returns (sum B_i, H, width, D) per layer. The
    zero slots must be hidden by the attention mask; positions of real tokens are unchanged.
    """
    if len(caches) == 1 and caches[0].get_seq_length() == width:
        return caches[0]
    stacked = new_cache(config)
    for target, per_layer in zip(stacked.layers, zip(*(cache.layers for cache in caches), strict=True), strict=True):
        keys = [F.pad(layer.keys, (0, 0, width - layer.keys.shape[-2], 0)) for layer in per_layer]
        values = [F.pad(layer.values, (0, 0, width - layer.values.shape[-2], 0)) for layer in per_layer]
        target.update(torch.cat(keys, dim=0), torch.cat(values, dim=0))
    return stacked


def select_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keep only batch rows `rows` (a 1-D long tensor), in place."""
    cache.batch_select_indices(rows)


def trim_left(cache: DynamicCache, columns: int) -> None:
    """Drop the first `columns` positions of every layer, in place (padding that no row attends to).

    Only for caches from `new_cache` on full-attention models: other layers keep position counters that a
    slice would desynchronise.
    """
    if not all(isinstance(layer, GrowingLayer) for layer in cache.layers):
        raise ValueError("trim_left needs a cache of GrowingLayer (full-attention models); see can_merge()")
    for layer in cache.layers:
        layer.drop_front(columns)


def read_columns(cache: DynamicCache, row: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of cache columns lo .. hi - 1 of batch row `row`, stacked over layers: (L, H, S, D) each.

    Copies, so the result survives the cache dropping or overwriting that row. A sliding-window layer keeps only
    the last columns (the widest layer's last ones); columns it dropped read as zeros, so read such a layer only
    over the window it keeps.
    """
    width = max(layer.keys.shape[-2] for layer in cache.layers)
    keys, values = [], []
    for layer in cache.layers:
        dropped = width - layer.keys.shape[-2]  # columns before this layer's window
        if not dropped:
            keys.append(layer.keys[row, :, lo:hi])
            values.append(layer.values[row, :, lo:hi])
            continue
        first = max(lo, dropped)
        shape = (*layer.keys.shape[1:2], hi - lo, layer.keys.shape[-1])
        k, v = layer.keys.new_zeros(shape), layer.values.new_zeros(shape)
        if first < hi:
            k[:, first - lo :] = layer.keys[row, :, first - dropped : hi - dropped]
            v[:, first - lo :] = layer.values[row, :, first - dropped : hi - dropped]
        keys.append(k)
        values.append(v)
    return torch.stack(keys), torch.stack(values)


def cache_from_kv(keys: torch.Tensor, values: torch.Tensor, config) -> DynamicCache:
    """A one-row cache holding `keys` and `values` (L, H, S, D), ready to prefill more tokens after them."""
    cache = new_cache(config)
    if len(cache.layers) != keys.shape[0]:
        raise ValueError(f"{keys.shape[0]} layers of keys for a model with {len(cache.layers)} layers")
    for layer, k, v in zip(cache.layers, keys, values, strict=True):
        layer.update(k.unsqueeze(0), v.unsqueeze(0))
    return cache


def cache_over(keys: torch.Tensor, values: torch.Tensor, length: int, config) -> DynamicCache:
    """A one-row cache that adopts `keys` and `values` (L, H, capacity, D) as its storage, no copy.

    The first `length` positions are filled; later tokens are written into the spare capacity in place.
    """
    cache = new_cache(config)
    if len(cache.layers) != keys.shape[0] or not all(isinstance(layer, GrowingLayer) for layer in cache.layers):
        raise ValueError(f"cannot adopt {keys.shape[0]} layers of keys for this model (full attention only)")
    for layer, k, v in zip(cache.layers, keys, values, strict=True):
        layer.lazy_initialization(k.unsqueeze(0), v.unsqueeze(0))
        layer.key_buffer, layer.value_buffer = k.unsqueeze(0), v.unsqueeze(0)
        layer.length = length
        layer._expose()
    return cache
