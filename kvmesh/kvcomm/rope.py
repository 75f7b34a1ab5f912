"""Re-rotating cached keys to a new position, for models with rotary position embeddings (RoPE).

A cached key is `s · R(p) · k`: the projected key `k` rotated by its position `p` (and scaled by the rope
type's attention factor `s`, 1 for most). Rotations by position compose, `R(p + d) = R(d) · R(p)`, so moving a
cached segment by `d` positions is one rotation of its keys by `d`; values carry no position and stay as they
are. That is exact for the first layer (whose keys depend on the token alone); deeper layers also carry the
context the segment was encoded in, which is what the reuse engine's anchors correct.

Supported: rope types with fixed inverse frequencies (`default`, `linear`, `llama3`, `yarn`), the
rotate-half convention of transformers' Llama-style models, partial rotary dimensions, and full-attention
layers. Models with sliding-window layers (Gemma 3) or length-dependent rope (`dynamic`, `longrope`) raise
`UnsupportedModelError` rather than give wrong numbers.
"""

from __future__ import annotations

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
