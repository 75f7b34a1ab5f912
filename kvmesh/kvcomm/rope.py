"""Rotary position embeddings (RoPE) of cached keys: moving a cached segment to new positions (`Rope`), and
taking each layer's rotation off keys and putting it back (`LayerRope`).

    rope = Rope.from_model(model)               # one rotation for every layer (kv-reuse, kv-select)
    moved = rope.move(segment, start)           # a cached segment as if encoded from `start`
    rope = LayerRope.from_model(model)          # per layer: inv_freq (L, R), attention scaling (L,)  (c2c)
    free = rope.strip(keys, positions)          # (L, H, S, D) cached keys -> position-free keys
    keys = rope.apply(free, positions)          # and back; positions (S,), any per-token positions

A cached key is `s · R(p) · k`: the projected (in Gemma 3, k-normed) key `k` rotated by its position `p` and
scaled by the rope type's attention factor `s` (1 for most). Rotations by position compose, `R(p + d) = R(d) ·
R(p)`, so moving a cached segment by `d` positions is one rotation of its keys by `d`; values carry no position.
That is exact for the first layer (whose keys depend on the token alone); deeper layers also carry the context
the segment was encoded in, which is what kv-reuse's anchors correct. `strip` returns `k`, a key that says what
the token is but not where it sits: what a cross-model mapper reads and writes (nothing is ever added to rotated
keys). Queries rotate the same way, so the same object strips and applies them.

Models differ per layer: Gemma 3 rotates its sliding-window layers with theta 1e4 and its full-attention layers
with 1e6; Llama-style models use one theta everywhere. `LayerRope` reads what the model itself uses (its rotary
module's buffers) rather than recomputing it from the config.

Supported: rope types with fixed inverse frequencies (`default`, `linear`, `llama3`, `yarn`), the rotate-half
convention of transformers' Llama-style models, partial rotary dimensions. `Rope` also needs full-attention
layers (cache segments of a sliding-window layer cannot be spliced). Models with length-dependent rope
(`dynamic`, `longrope`), and sliding-window models for `Rope`, raise `UnsupportedModelError` rather than give
wrong numbers. Angles are computed in float64 (transformers uses float32: they agree to ~1e-6 at positions in
the thousands).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvmesh.llm.cache import can_merge
from kvmesh.llm.segment import KVSegment

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class UnsupportedModelError(ValueError):
    """The model's attention or position encoding is one the KV toolkit cannot move caches for (yet)."""


def _rope_type(config) -> str:
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return parameters.get("rope_type", parameters.get("type", "default"))


def check_supported(model) -> None:
    """Raise `UnsupportedModelError`, saying why, unless caches of `model` can be re-rotated and spliced."""
    config = model.config
    name = getattr(config, "model_type", type(model).__name__)
    if not can_merge(config):
        raise UnsupportedModelError(
            f"{name}: sliding-window layers keep only a window of positions, so cache segments cannot be "
            "spliced; KV reuse supports full-attention models (Llama, Qwen 2, Mistral without a window, SmolLM2)"
        )
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise UnsupportedModelError(f"{name}: no rotary position embedding found (model.model.rotary_emb)")
    rope_type = _rope_type(config)
    if rope_type not in STATIC_ROPE_TYPES:
        raise UnsupportedModelError(
            f"{name}: rope type {rope_type!r} changes its frequencies with the sequence length; "
            f"KV reuse supports {', '.join(STATIC_ROPE_TYPES)}"
        )


@dataclass(frozen=True)
class Rope:
    """The model's rotation: `inv_freq` (R,) for the first `2R` dimensions of each head (R <= D / 2)."""

    inv_freq: torch.Tensor

    @classmethod
    def from_model(cls, model) -> Rope:
        check_supported(model)
        rotary = getattr(model, "model", model).rotary_emb
        return cls(rotary.inv_freq.detach().float().cpu())

    @property
    def rotary_dim(self) -> int:
        return 2 * self.inv_freq.numel()

    def _cos_sin(self, offset: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = offset * self.inv_freq.to(like.device, torch.float64)  # float64: exact for large offsets
        return angles.cos().to(like.dtype), angles.sin().to(like.dtype)

    def move(self, segment: KVSegment, start: int) -> KVSegment:
        """`segment`'s tokens as if encoded from position `start`: keys re-rotated, values unchanged."""
        if start == segment.start:
            return segment
        return KVSegment(self.rotate(segment.keys, start - segment.start), segment.values, start, segment.token_ids)

    def rotate(self, keys: torch.Tensor, offset: int) -> torch.Tensor:
        """`keys` (..., S, D) moved by `offset` positions (any sign); a new tensor of the same dtype."""
        if offset == 0:
            return keys.clone()
        return self.rotate_into(keys, offset, torch.empty_like(keys))

    def rotate_into(self, keys: torch.Tensor, offset: int, out: torch.Tensor) -> torch.Tensor:
        """Write `keys` moved by `offset` positions into `out` (same shape, not overlapping `keys`); returns out.

        With x = (x1, x2) the two halves of the rotary dimensions: (x1 cos - x2 sin, x2 cos + x1 sin).
        """
        if offset == 0:
            return out.copy_(keys)
        cos, sin = self._cos_sin(offset, keys)
        half = self.rotary_dim // 2
        x1, x2 = keys[..., :half], keys[..., half : self.rotary_dim]
        first, second = out[..., :half], out[..., half : self.rotary_dim]
        torch.mul(x1, cos, out=first)
        first.sub_(x2 * sin)
        torch.mul(x2, cos, out=second)
        second.add_(x1 * sin)
        if self.rotary_dim < keys.shape[-1]:
            out[..., self.rotary_dim :] = keys[..., self.rotary_dim :]
        return out


def rotate_by_angles(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`keys` (..., S, D) with their first `2R` dimensions rotated by per-position angles; a new tensor.

    cos, sin: (..., S, R), broadcast against `keys`' leading dimensions; the same rotate-half convention as
    `Rope.rotate_into` (x1 cos - x2 sin, x2 cos + x1 sin), any dimensions past 2R pass through. Differentiable.
    """
    half = cos.shape[-1]
    x1, x2 = keys[..., :half], keys[..., half : 2 * half]
    rotated = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if 2 * half < keys.shape[-1]:
        rotated.append(keys[..., 2 * half :])
    return torch.cat(rotated, dim=-1)


# --- per layer: position-free keys (c2c) ---


def _rotary_module(model):
    model = getattr(model, "model", model)  # a LocalLM holds the HF model; a causal LM holds the base model
    inner = getattr(model, "model", model)
    rotary = getattr(inner, "rotary_emb", None)
    if rotary is None:
        name = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UnsupportedModelError(f"{name}: no rotary position embedding found (model.model.rotary_emb)")
    return model, rotary


def layer_types(config) -> list[str]:
    """Each layer's attention type ("sliding_attention", "full_attention", ...); all full when not stated."""
    types = getattr(config, "layer_types", None)
    return list(types) if types else ["full_attention"] * config.num_hidden_layers


def _check_rope_types(config, types: Sequence[str]) -> None:
    parameters = getattr(config, "rope_parameters", None) or {}
    per_type = {t: parameters[t] for t in set(types) if isinstance(parameters.get(t), dict)}
    found = {t: p.get("rope_type", "default") for t, p in per_type.items()} if per_type else {"all": _rope_type(config)}
    for where, rope_type in found.items():
        if rope_type not in STATIC_ROPE_TYPES:
            raise UnsupportedModelError(
                f"{config.model_type}: rope type {rope_type!r} ({where} layers) changes its frequencies with the "
                f"sequence length, so keys cannot be stripped per position; supported: {', '.join(STATIC_ROPE_TYPES)}"
            )


@dataclass(frozen=True)
class LayerRope:
    """The rotation of every layer of one model.

    Args:
        inv_freq: (L, R) inverse frequencies of layer l's rotation, for the first 2R dimensions of a head.
        scaling: (L,) attention scaling the rotation multiplies keys and queries by.
    """

    inv_freq: torch.Tensor
    scaling: torch.Tensor

    def __post_init__(self) -> None:
        if self.inv_freq.dim() != 2 or self.scaling.shape != (self.inv_freq.shape[0],):
            raise ValueError(
                f"need inv_freq (L, R) and scaling (L,), got {tuple(self.inv_freq.shape)} and "
                f"{tuple(self.scaling.shape)}"
            )

    @classmethod
    def from_model(cls, model) -> LayerRope:
        """Read the rotation of each layer from `model` (a LocalLM or a transformers causal LM)."""
        model, rotary = _rotary_module(model)
        config = model.config
        types = layer_types(config)
        _check_rope_types(config, types)
        rows, scales = [], []
        for kind in types:
            inv_freq = getattr(rotary, f"{kind}_inv_freq", None)
            if inv_freq is None:
                inv_freq = getattr(rotary, "inv_freq", None)
                scale = getattr(rotary, "attention_scaling", 1.0)
            else:
                scale = getattr(rotary, f"{kind}_attention_scaling", 1.0)
            if inv_freq is None:
                raise UnsupportedModelError(f"{config.model_type}: the rotary module has no inverse frequencies")
            rows.append(inv_freq.detach().double().cpu())
            scales.append(float(scale))
        if len({row.numel() for row in rows}) != 1:
            raise UnsupportedModelError(f"{config.model_type}: layers rotate different numbers of dimensions")
        return cls(torch.stack(rows), torch.tensor(scales, dtype=torch.float64))

    @property
    def layers(self) -> int:
        return self.inv_freq.shape[0]

    @property
    def rotary_dim(self) -> int:
        return 2 * self.inv_freq.shape[1]

    def select(self, layers: Sequence[int]) -> LayerRope:
        """The rotation of `layers` only, in that order (for caches that hold some layers)."""
        index = torch.as_tensor(list(layers), dtype=torch.long)
        return LayerRope(self.inv_freq[index], self.scaling[index])

    def _cos_sin(
        self, positions: torch.Tensor | Sequence[int] | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """cos, sin (L, 1, S, R) and scaling (L, 1, 1, 1) in `like`'s dtype, for `like` (L, H, S, D)."""
        if like.dim() != 4 or like.shape[0] != self.layers:
            raise ValueError(f"need (L={self.layers}, H, S, D) keys, got {tuple(like.shape)}")
        if like.shape[-1] < self.rotary_dim:
            raise ValueError(f"head dimension {like.shape[-1]} is smaller than the rotary dimension {self.rotary_dim}")
        count = like.shape[2]
        if positions is None:
            positions = torch.arange(count)
        positions = torch.as_tensor(positions, dtype=torch.float64).reshape(-1).cpu()
        if positions.numel() != count:
            raise ValueError(f"{positions.numel()} positions for {count} tokens")
        angles = positions[None, :, None] * self.inv_freq[:, None, :]  # (L, S, R), float64
        cos, sin = (part.to(like.device, like.dtype).unsqueeze(1) for part in (angles.cos(), angles.sin()))
        return cos, sin, self.scaling.to(like.device, like.dtype).view(-1, 1, 1, 1)

    def apply(self, keys: torch.Tensor, positions: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Position-free keys (or queries) (L, H, S, D) rotated to `positions` (S,) (default 0 .. S - 1).

        Differentiable in `keys`, so a trained mapper's output can be rotated inside the loss.
        """
        cos, sin, scale = self._cos_sin(positions, keys)
        rotated = rotate_by_angles(keys, cos * scale, sin * scale)
        return rotated

    def strip(self, keys: torch.Tensor, positions: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Rotated keys (or queries) (L, H, S, D) cached at `positions` (S,) (default 0 .. S - 1) made
        position-free: rotated back by each token's own position and divided by the attention scaling."""
        cos, sin, scale = self._cos_sin(positions, keys)
        return rotate_by_angles(keys, cos / scale, -sin / scale)

    def move(self, keys: torch.Tensor, source: torch.Tensor | Sequence[int], target: torch.Tensor | Sequence[int]):
        """Keys (L, H, S, D) rotated at `source` positions, re-rotated to `target` positions (S,) each."""
        return self.apply(self.strip(keys, source), target)
