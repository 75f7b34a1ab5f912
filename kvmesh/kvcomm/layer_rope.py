"""Per-layer rotary embedding of a model: taking RoPE off cached keys and putting it back on, per position.

    rope = LayerRope.from_model(model)          # inv_freq (L, R) and attention scaling (L,), one row per layer
    free = rope.strip(keys, positions)          # (L, H, S, D) cached keys -> position-free keys
    keys = rope.apply(free, positions)          # and back; positions (S,), any per-token positions

A cached key is `s · R(p) · k`, with `k` the projected (and, in Gemma 3, k-normed) key, `R(p)` the rotation by
its position and `s` the rope type's attention scaling (1 for most). `strip` returns `k`: a key that says what
the token is but not where it sits, which is what a cross-model mapper reads and writes (C2C-style transfer maps
position-free keys and the receiver's own rotation is applied afterwards; nothing is ever added to rotated keys).
Queries rotate the same way, so the same object strips and applies them.

Models differ per layer: Gemma 3 rotates its sliding-window layers with theta 1e4 and its full-attention layers
with 1e6, Llama-style models use one theta everywhere. `LayerRope` reads what the model itself uses (its
rotary module's buffers) rather than recomputing it from the config.

Supported: rope types with fixed frequencies (`default`, `linear`, `llama3`, `yarn`, as in `kvmesh.kvcomm.rope`),
the rotate-half convention, partial rotary dimensions. Length-dependent rope (`dynamic`, `longrope`) raises
`UnsupportedModelError`. Angles are computed in float64 (transformers uses float32: they agree to ~1e-6 at
positions in the thousands).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvmesh.kvcomm.rope import STATIC_ROPE_TYPES, UnsupportedModelError, _rope_type, rotate_by_angles


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
