"""The trained c2c mapper for context transfer: per receiver layer, a small network that writes the sender's cache
in the receiver's format.

    fuser = Fuser(config)                         # config.kind == "fuser"; config.hidden sets the width
    fuser.init_from(ridge)                        # optional: start from a fitted RidgeMapper's linear maps
    keys, values = fuser.transfer(sender_keys, sender_values)      # what the receiver reads in front of its prompt

For receiver layer l reading sender layer s = layer_map[l], separately for keys and values, with x the sender's
position-free rows of layer s flattened over heads (S, Hs · Ds):

    h = GELU(x A_l + a_l)                               hidden (S, hidden)
    projection(x) = x M_l + m_l + h B_l + b_l           (S, Hr · Dr): a linear map plus a small MLP
    w = sigmoid(h C_l + c_l)                            (S, Hr): a weight per token and receiver head
    out = w · projection(x)

The layer's gate g_l (`kvmesh.kvcomm.c2c.mappers.gates`) does not scale these rows: it scales the attention the
layer pays them (a log g_l bias on their logits while training, `kvmesh.llm.layer_mask`), so a closed gate is
the channel's mask: that layer does not attend to the mapped context at all (`open_layers`) and reads the
receiver's own prompt alone. Zeroed rows instead would still take softmax mass. `M_l` can start from a ridge fit
(`init_from`), `B_l` starts at zero and `w` near 1, so a fresh fuser built from a ridge mapper maps like it.
Everything is position-free: RoPE is stripped before and applied after by the caller (the mapper contract,
`kvmesh.kvcomm.c2c.mappers.base`).

Size for gemma3-270m -> smollm2-135m (30 receiver layers, 256 -> 192 per token) at hidden 256: 9,915,090
parameters (`parameter_count`), against C2C's ~17M per layer.

This fuser serves transfer only: it writes a whole receiver-format cache, which added to the receiver's own rows
would double them. Fusion is `kvmesh.kvcomm.c2c.mappers.residual.ResidualFuser`, trained in that mode.
"""

from __future__ import annotations

import torch
from torch import nn

from kvmesh.kvcomm.c2c.mappers.base import TRANSFER, MapperConfig, flatten, unflatten
from kvmesh.kvcomm.c2c.mappers.gates import GatedMapper, LayerProjection, per_head


class Projection(LayerProjection):
    """One receiver layer's keys (or values): x (S, W_in) -> (projection (S, W_out), weight (S, H_out))."""

    def __init__(self, width_in: int, width_out: int, heads_out: int, hidden: int) -> None:
        super().__init__(width_in, width_out, heads_out, hidden, hidden_in=width_in)

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = nn.functional.gelu(self.hidden(rows))
        return self.linear(rows) + self.out(hidden), torch.sigmoid(self.weight(hidden))


class Fuser(GatedMapper):
    """The transfer-mode fuser as a `KVMapper` (see the module docstring)."""

    kind = "fuser"
    modes = (TRANSFER,)
    projection = Projection

    def transfer(self, keys, values):
        """w · projection, per receiver layer: (Lr, Hr, S, Dr) keys and values (the gates act on attention)."""
        self.check_sender(keys, values)
        dtype = self.gate_logits.dtype
        sender = {"k": flatten(keys.to(dtype)), "v": flatten(values.to(dtype))}  # (Ls, S, W_in)
        out = {}
        for side, projections in (("k", self.keys), ("v", self.values)):
            layers = []
            for layer, projection in enumerate(projections):
                mapped, weight = projection(sender[side][self.config.layer_map[layer]])  # (S, W_out), (S, Hr)
                layers.append(per_head(weight, mapped.shape[-1]) * mapped)
            out[side] = unflatten(torch.stack(layers), self.config.receiver_geometry.kv_heads)
        return out["k"], out["v"]


def parameter_count(config: MapperConfig) -> int:
    """Parameters of a transfer fuser for `config`, without building it."""
    sender, receiver = config.sender_geometry, config.receiver_geometry
    w_in, w_out, heads, hidden = sender.width, receiver.width, receiver.kv_heads, config.hidden
    per_path = (w_in + 1) * w_out + (w_in + 1) * hidden + (hidden + 1) * w_out + (hidden + 1) * heads
    return receiver.layers * (2 * per_path + 1)
