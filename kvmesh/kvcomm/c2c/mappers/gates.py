"""What the trained c2c mappers share: one gate per receiver layer (C2C's), and their weights as mapper tensors.

    mapper.temperature = temperature_at(step, steps)   # the gates anneal from soft to hard while training
    mapper.gates()                                     # (Lr,) Gumbel-sigmoid in training mode, hard 0/1 in eval
    mapper.open_layers()                               # the receiver layers whose hard gate is open

A gate is a Gumbel-sigmoid of a learned logit at temperature τ while training (τ annealed from 1 to 0.001 by
`temperature_at`, so it ends as a 0/1 choice), and a hard 0/1 (logit > 0) in eval mode and at inference. A layer
whose gate is closed is one the mapper does not feed: the channel hides the mapped context from it (transfer) or
leaves its rows untouched (fusion). Subclasses hold `keys` and `values`, one projection per receiver layer, each
with a `linear` map from the sender's rows into the receiver's format (which `init_from` starts from a ridge fit).
"""

from __future__ import annotations

import torch
from torch import nn

from kvmesh.kvcomm.c2c.mappers.base import KVMapper, MapperConfig, MapperError
from kvmesh.kvcomm.c2c.mappers.ridge import RidgeMapper

GATE_INIT = 2.0  # gate logits start open: sigmoid(2 / τ) -> 1 as τ falls
WEIGHT_INIT = 4.0  # per-head weights start at sigmoid(4) ≈ 0.98


def temperature_at(step: int, steps: int, start: float = 1.0, end: float = 1e-3) -> float:
    """The gate temperature at `step` of `steps`: exponential from `start` (soft) to `end` (nearly hard)."""
    if steps <= 1:
        return end
    fraction = min(max(step / (steps - 1), 0.0), 1.0)
    return start * (end / start) ** fraction


class LayerProjection(nn.Module):
    """One receiver layer's keys (or values): `linear` maps the sender's rows (S, W_in) into the receiver's format
    (S, W_out); a hidden layer of `hidden` units reads `hidden_in` features per row (what, is the subclass's
    `forward`), `out` writes (S, W_out) from it (zero at start) and `weight` a weight per receiver head
    (S, H_out), sigmoid(WEIGHT_INIT) at start."""

    def __init__(self, width_in: int, width_out: int, heads_out: int, hidden: int, hidden_in: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width_in, width_out)
        self.hidden = nn.Linear(hidden_in, hidden)
        self.out = nn.Linear(hidden, width_out)
        self.weight = nn.Linear(hidden, heads_out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        nn.init.zeros_(self.weight.weight)
        nn.init.constant_(self.weight.bias, WEIGHT_INIT)


class GatedMapper(nn.Module, KVMapper):
    """A trained mapper with a gate per receiver layer and a `projection` per receiver layer for keys and one for
    values. `temperature`: the gates' Gumbel temperature; `generator`: where their noise comes from in training
    mode."""

    projection: type[LayerProjection]  # built as projection(W_in, W_out, H_out, hidden)

    def __init__(self, config: MapperConfig) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise MapperError(f"a {type(self).__name__} needs a config of kind {self.kind!r}, got {config.kind!r}")
        self.config = config
        sender, receiver = config.sender_geometry, config.receiver_geometry
        shape = (sender.width, receiver.width, receiver.kv_heads, config.hidden)
        self.keys = nn.ModuleList(self.projection(*shape) for _ in range(receiver.layers))
        self.values = nn.ModuleList(self.projection(*shape) for _ in range(receiver.layers))
        self.gate_logits = nn.Parameter(torch.full((config.receiver_geometry.layers,), GATE_INIT))
        self.temperature = 1.0
        self.generator: torch.Generator | None = None  # the gate noise's source in training mode (None: torch's)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def init_from(self, ridge: RidgeMapper) -> GatedMapper:
        """Start each layer's linear map from a ridge mapper fitted for the same pair and layer map."""
        if ridge.config.layer_map != self.config.layer_map or ridge.key_weight.shape[1:] != (
            self.config.sender_geometry.width,
            self.config.receiver_geometry.width,
        ):
            raise MapperError(
                f"the ridge mapper ({ridge.config.direction}, layer map {ridge.config.layer_map}) does not fit this "
                f"{self.kind} mapper ({self.config.direction}, layer map {self.config.layer_map}); fit one for the "
                "same pair"
            )
        for projections, weight, bias in (
            (self.keys, ridge.key_weight, ridge.key_bias),
            (self.values, ridge.value_weight, ridge.value_bias),
        ):
            for layer, projection in enumerate(projections):
                projection.linear.weight.copy_(weight[layer].T)
                projection.linear.bias.copy_(bias[layer])
        return self

    def gates(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """(Lr,) gate values: Gumbel-sigmoid at `temperature` in training mode, hard 0/1 in eval mode."""
        if not self.training:
            return (self.gate_logits > 0).to(self.gate_logits.dtype)
        uniform = torch.rand(self.gate_logits.shape, generator=generator or self.generator).clamp(1e-6, 1 - 1e-6)
        noise = (uniform.log() - (-uniform).log1p()).to(self.gate_logits.device)  # logistic: Gumbel difference
        return torch.sigmoid((self.gate_logits + noise) / max(self.temperature, 1e-8))

    def layer_gates(self) -> torch.Tensor:
        return self.gates()

    def open_layers(self) -> list[int]:
        """Receiver layers whose hard gate is open (logit > 0)."""
        return [i for i, logit in enumerate(self.gate_logits.tolist()) if logit > 0]

    def tensors(self):
        return dict(self.state_dict())

    @classmethod
    def from_tensors(cls, config, tensors):
        mapper = cls(config)
        expected = {name: tuple(t.shape) for name, t in mapper.state_dict().items()}
        given = {name: tuple(t.shape) for name, t in tensors.items()}
        if given != expected:
            wrong = sorted(set(expected) ^ set(given)) or sorted(n for n in expected if expected[n] != given[n])
            raise MapperError(
                f"the {config.kind} mapper's weights do not fit its config (hidden {config.hidden}, "
                f"{config.direction}): {', '.join(wrong[:3])} differ; was it saved by another version?"
            )
        mapper.load_state_dict(tensors)
        return mapper.eval()


def per_head(weight: torch.Tensor, width: int) -> torch.Tensor:
    """(S, H) weights per head -> (S, H · D) per channel, D = width / H."""
    return weight.repeat_interleave(width // weight.shape[-1], dim=-1)
