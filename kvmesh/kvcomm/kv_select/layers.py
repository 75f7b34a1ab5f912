"""Which layers a `kv-select` receiver reads a sender's context in: calibration attention mixed with a depth prior.

    scores = context_attention(model, [(context_ids, receiver_ids), ...])   # (L,): mass on the context, per layer
    chosen = choose_layers(scores, LayerChoice(fraction=0.3))                # frozenset of layer indices

A layer's calibration score is the attention mass the receiver's tokens put on the sender's context (the sink,
position 0, left out: every layer pours mass there whatever the context says), averaged over heads, query
tokens and calibration pairs. KVComm found the useful layers cluster at mid-depth, so the score is mixed with
a Gaussian prior over relative depth: `weight * attention + (1 - weight) * prior`, both scaled to [0, 1]. The
top `fraction` of layers by that mix are chosen (ties to the shallower layer), plus layer 0 when
`keep_first` (KVComm keeps it: it embeds the tokens and moves little).

Caveat: calibration runs eager attention (SDPA returns no weights) for its forward passes only, on full
prompts, one pair at a time: seconds on SmolLM2-135M for 16 pairs, not for long contexts on large models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvmesh.llm.layer_mask import PREFIX


@dataclass(frozen=True)
class LayerChoice:
    """How `choose_layers` picks layers.

    Args:
        fraction: share of the layers to choose (KVComm: 0.3).
        weight: weight of the calibration attention against the depth prior, in [0, 1].
        centre: the prior's centre, as relative depth in [0, 1] (0.5: mid-depth).
        width: the prior's standard deviation, in relative depth.
        keep_first: also choose layer 0.
    """

    fraction: float = 0.3
    weight: float = 0.5
    centre: float = 0.5
    width: float = 0.2
    keep_first: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not 0 <= self.weight <= 1 or not 0 <= self.centre <= 1 or self.width <= 0:
            raise ValueError(
                f"need weight and centre in [0, 1] and width > 0, got {self.weight}, {self.centre}, {self.width}"
            )


def depth_prior(layers: int, centre: float, width: float) -> torch.Tensor:
    """(L,) Gaussian over relative depth l / (L - 1), peaking at 1 on `centre`."""
    depth = torch.arange(layers, dtype=torch.float64) / max(layers - 1, 1)
    return torch.exp(-0.5 * ((depth - centre) / width) ** 2)


def _unit(values: torch.Tensor) -> torch.Tensor:
    """Scaled to [0, 1] (all equal: all 0)."""
    low, high = values.min(), values.max()
    return torch.zeros_like(values) if high <= low else (values - low) / (high - low)


def choose_layers(scores: torch.Tensor, choice: LayerChoice) -> frozenset[int]:
    """The layers to read the context in, from (L,) calibration `scores` (the same scores give the same layers)."""
    layers = scores.shape[0]
    prior = depth_prior(layers, choice.centre, choice.width)
    mixed = choice.weight * _unit(scores.double()) + (1 - choice.weight) * _unit(prior)
    count = max(1, math.ceil(choice.fraction * layers - 1e-9))
    order = sorted(range(layers), key=lambda layer: (-float(mixed[layer]), layer))
    chosen = set(order[:count])
    return frozenset(chosen | ({0} if choice.keep_first else set()))


@torch.inference_mode()
def context_attention(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> torch.Tensor:
    """(L,) mean attention mass the receiver's tokens put on the context (sink excluded), over `pairs` of
    (context ids, receiver ids) read as one prompt by `model` (a transformers causal LM)."""
    if not pairs:
        raise ValueError("calibration needs at least one (context, receiver) pair")
    current = model.config._attn_implementation
    eager = PREFIX + "eager"
    model.set_attn_implementation(eager)
    try:
        total = None
        for context, receiver in pairs:
            if len(context) < 2 or not receiver:
                raise ValueError("a calibration pair needs a context of at least 2 tokens and a receiver turn")
            ids = torch.tensor([[*context, *receiver]], device=model.device)
            attentions = model(input_ids=ids, output_attentions=True).attentions  # L x (1, H, T, T)
            mass = torch.stack([a[0, :, len(context) :, 1 : len(context)].sum(-1).mean().double() for a in attentions])
            total = mass if total is None else total + mass
        return (total / len(pairs)).cpu()
    finally:
        model.set_attn_implementation(current)
