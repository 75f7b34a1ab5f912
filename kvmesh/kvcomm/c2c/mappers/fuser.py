"""The trained C2C fuser: per receiver layer, a small network that writes the sender's cache in the receiver's format.

    fuser = Fuser(config)                         # config.kind == "fuser"; config.hidden sets the width
    fuser.init_from(ridge)                        # optional: start from a fitted RidgeMapper's linear maps
    fuser.temperature = temperature_at(step, steps)   # the gates anneal from soft to hard while training
    keys, values = fuser.transfer(sender_keys, sender_values)      # context transfer (what the receiver prepends)
    keys, values = fuser.fuse(receiver_keys, receiver_values, sender_keys, sender_values)   # fusion

For receiver layer l reading sender layer s = layer_map[l], separately for keys and values, with x the sender's
position-free rows of layer s flattened over heads (S, Hs · Ds):

    h = GELU(x A_l + a_l)                               hidden (S, hidden)
    projection(x) = x M_l + m_l + h B_l + b_l           (S, Hr · Dr): a linear map plus a small MLP
    w = sigmoid(h C_l + c_l)                            (S, Hr): a weight per token and receiver head
    g_l                                                 one gate per layer (shared by keys and values)

    transfer: out = g_l · w · projection(x)             fuse: out = receiver + g_l · w · projection(x)

The gate is C2C's: a Gumbel-sigmoid of a learned logit at temperature τ while training (τ annealed from 1 to
0.001, `temperature_at`, so it ends as a 0/1 choice), a hard 0/1 (logit > 0) in eval mode and at inference.
`M_l` can start from a ridge fit (`init_from`), `B_l` starts at zero and `w` near 1, so a fresh fuser built
from a ridge mapper maps like it. Everything is position-free: RoPE is stripped before and applied after by
the caller (the mapper contract, `kvmesh.kvcomm.c2c.mappers.base`).

Size for gemma3-270m -> smollm2-135m (30 receiver layers, 256 -> 192 per token) at hidden 256: 9,915,090
parameters (`parameter_count`), against C2C's ~17M per layer.

Differences from C2C: the projection reads the sender only (C2C's also reads the receiver's rows), so one
network serves context transfer, where the receiver has no rows of the sender's text.
"""

from __future__ import annotations

import torch
from torch import nn

from kvmesh.kvcomm.c2c.mappers.base import KVMapper, MapperConfig, MapperError, flatten, unflatten
from kvmesh.kvcomm.c2c.mappers.ridge import RidgeMapper

GATE_INIT = 2.0  # gate logits start open: sigmoid(2 / τ) -> 1 as τ falls
WEIGHT_INIT = 4.0  # per-head weights start at sigmoid(4) ≈ 0.98


def temperature_at(step: int, steps: int, start: float = 1.0, end: float = 1e-3) -> float:
    """The gate temperature at `step` of `steps`: exponential from `start` (soft) to `end` (nearly hard)."""
    if steps <= 1:
        return end
    fraction = min(max(step / (steps - 1), 0.0), 1.0)
    return start * (end / start) ** fraction


class Projection(nn.Module):
    """One receiver layer's keys (or values): x (S, W_in) -> (projection (S, W_out), weight (S, H_out))."""

    def __init__(self, width_in: int, width_out: int, heads_out: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width_in, width_out)
        self.hidden = nn.Linear(width_in, hidden)
        self.out = nn.Linear(hidden, width_out)
        self.weight = nn.Linear(hidden, heads_out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        nn.init.zeros_(self.weight.weight)
        nn.init.constant_(self.weight.bias, WEIGHT_INIT)

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = nn.functional.gelu(self.hidden(rows))
        return self.linear(rows) + self.out(hidden), torch.sigmoid(self.weight(hidden))


class Fuser(nn.Module, KVMapper):
    """C2C's fuser as a `KVMapper` (see the module docstring). `temperature`: the gates' Gumbel temperature;
    `generator`: where their noise comes from in training mode."""

    kind = "fuser"

    def __init__(self, config: MapperConfig) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise MapperError(f"a Fuser needs a config of kind 'fuser', got {config.kind!r}")
        self.config = config
        sender, receiver = config.sender_geometry, config.receiver_geometry
        shape = (sender.width, receiver.width, receiver.kv_heads, config.hidden)
        self.keys = nn.ModuleList(Projection(*shape) for _ in range(receiver.layers))
        self.values = nn.ModuleList(Projection(*shape) for _ in range(receiver.layers))
        self.gate_logits = nn.Parameter(torch.full((receiver.layers,), GATE_INIT))
        self.temperature = 1.0
        self.generator: torch.Generator | None = None  # the gate noise's source in training mode (None: torch's)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def init_from(self, ridge: RidgeMapper) -> Fuser:
        """Start each linear map from a ridge mapper fitted for the same pair and layer map."""
        if ridge.config.layer_map != self.config.layer_map or ridge.key_weight.shape[1:] != (
            self.config.sender_geometry.width,
            self.config.receiver_geometry.width,
        ):
            raise MapperError(
                f"the ridge mapper ({ridge.config.direction}, layer map {ridge.config.layer_map}) does not fit this "
                f"fuser ({self.config.direction}, layer map {self.config.layer_map}); fit one for the same pair"
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

    def _mapped(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g · w · projection, per receiver layer: (Lr, Hr, S, Dr) keys and values."""
        self.check_sender(keys, values)
        gates = self.gates()
        dtype = self.gate_logits.dtype
        sender = {"k": flatten(keys.to(dtype)), "v": flatten(values.to(dtype))}  # (Ls, S, W_in)
        heads = self.config.receiver_geometry.kv_heads
        out = {}
        for side, projections in (("k", self.keys), ("v", self.values)):
            layers = []
            for layer, projection in enumerate(projections):
                mapped, weight = projection(sender[side][self.config.layer_map[layer]])  # (S, W_out), (S, Hr)
                weight = weight.repeat_interleave(mapped.shape[-1] // heads, dim=-1)
                layers.append(gates[layer] * weight * mapped)
            out[side] = unflatten(torch.stack(layers), heads)
        return out["k"], out["v"]

    def transfer(self, keys, values):
        return self._mapped(keys, values)

    def fuse(self, receiver_keys, receiver_values, sender_keys, sender_values):
        keys, values = self._mapped(sender_keys, sender_values)
        return receiver_keys + keys, receiver_values + values

    def open_gates(self) -> list[int]:
        """Receiver layers whose hard gate is open (logit > 0)."""
        return [i for i, logit in enumerate(self.gate_logits.tolist()) if logit > 0]

    def tensors(self):
        return dict(self.state_dict())

    @classmethod
    def from_tensors(cls, config, tensors):
        fuser = cls(config)
        expected = {name: tuple(t.shape) for name, t in fuser.state_dict().items()}
        given = {name: tuple(t.shape) for name, t in tensors.items()}
        if given != expected:
            wrong = sorted(set(expected) ^ set(given)) or sorted(n for n in expected if expected[n] != given[n])
            raise MapperError(
                f"the fuser's weights do not fit its config (hidden {config.hidden}, {config.direction}): "
                f"{', '.join(wrong[:3])} differ; was it saved by another version?"
            )
        fuser.load_state_dict(tensors)
        return fuser.eval()


def parameter_count(config: MapperConfig) -> int:
    """Parameters of a fuser for `config`, without building it."""
    sender, receiver = config.sender_geometry, config.receiver_geometry
    w_in, w_out, heads, hidden = sender.width, receiver.width, receiver.kv_heads, config.hidden
    per_path = (w_in + 1) * w_out + (w_in + 1) * hidden + (hidden + 1) * w_out + (hidden + 1) * heads
    return receiver.layers * (2 * per_path + 1)
