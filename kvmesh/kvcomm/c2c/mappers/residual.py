"""The trained c2c mapper for fusion (C2C's own recipe): a gated residual over both models' rows of one text.

    fuser = ResidualFuser(config)                 # config.kind == "residual"; config.hidden sets the width
    fuser.init_from(ridge)                        # optional: start the sender-row alignment from a ridge fit
    keys, values = fuser.fuse(receiver_keys, receiver_values, sender_keys, sender_values)

For receiver layer l reading sender layer s = layer_map[l], separately for keys and values, with x the sender's
position-free rows of layer s and r the receiver's rows of layer l, flattened over heads, one row per receiver
token of the shared text (the sender's aligned to them, `kvmesh.kvcomm.c2c.align`):

    a = x M_l + m_l                                     the sender's rows in the receiver's format (S, Hr · Dr)
    h = GELU([a, r] A_l + a_l)                          hidden (S, hidden): both models' rows read together
    residual = h B_l + b_l                              (S, Hr · Dr)
    w = sigmoid(h C_l + c_l)                            (S, Hr): a weight per token and receiver head
    fused = r + g_l · w · residual                      g_l: the layer's gate (`kvmesh.kvcomm.c2c.mappers.gates`)

`B_l` and `b_l` start at zero, so a fresh fuser returns the receiver's rows unchanged, and a closed gate leaves
them as they were (the channel does not even touch a closed layer's rows: `open_layers`). Trained end to end in
fusion mode (`kvmesh c2c train --mode fusion`), on the receiver's loss over its reply. It serves fusion only: with
no receiver rows of the sender's text (transfer) it has nothing to add to.

Size for gemma3-270m -> smollm2-135m (30 receiver layers, 256 -> 192 per token) at hidden 256: see
`parameter_count` (about 11.9M).
"""

from __future__ import annotations

import torch
from torch import nn

from kvmesh.kvcomm.c2c.mappers.base import FUSION, MapperConfig, MapperError, flatten, unflatten
from kvmesh.kvcomm.c2c.mappers.gates import GatedMapper, LayerProjection, per_head


class ResidualProjection(LayerProjection):
    """One receiver layer's keys (or values): sender rows x (S, W_in) and receiver rows r (S, W_out) ->
    (residual (S, W_out), weight (S, H_out))."""

    def __init__(self, width_in: int, width_out: int, heads_out: int, hidden: int) -> None:
        super().__init__(width_in, width_out, heads_out, hidden, hidden_in=2 * width_out)

    def forward(self, sender: torch.Tensor, receiver: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = nn.functional.gelu(self.hidden(torch.cat([self.linear(sender), receiver], dim=-1)))
        return self.out(hidden), torch.sigmoid(self.weight(hidden))


class ResidualFuser(GatedMapper):
    """The fusion-mode fuser as a `KVMapper` (see the module docstring)."""

    kind = "residual"
    modes = (FUSION,)
    projection = ResidualProjection

    def fuse(self, receiver_keys, receiver_values, sender_keys, sender_values):
        """r + g · w · residual, per receiver layer: (Lr, Hr, S, Dr) keys and values."""
        self.check_sender(sender_keys, sender_values)
        if receiver_keys.shape[2] != sender_keys.shape[2]:
            raise MapperError(
                f"fusion needs one sender row per receiver row: {sender_keys.shape[2]} against "
                f"{receiver_keys.shape[2]} (align the sender's rows to the receiver's tokens first)"
            )
        gates, dtype = self.gates(), self.gate_logits.dtype
        heads = self.config.receiver_geometry.kv_heads
        out = {}
        for side, projections, sender, receiver in (
            ("k", self.keys, sender_keys, receiver_keys),
            ("v", self.values, sender_values, receiver_values),
        ):
            sender_rows, receiver_rows = flatten(sender.to(dtype)), flatten(receiver.to(dtype))
            layers = []
            for layer, projection in enumerate(projections):
                own = receiver_rows[layer]
                residual, weight = projection(sender_rows[self.config.layer_map[layer]], own)
                layers.append(own + gates[layer] * per_head(weight, residual.shape[-1]) * residual)
            out[side] = unflatten(torch.stack(layers), heads)
        return out["k"], out["v"]


def parameter_count(config: MapperConfig) -> int:
    """Parameters of a residual fuser for `config`, without building it."""
    sender, receiver = config.sender_geometry, config.receiver_geometry
    w_in, w_out, heads, hidden = sender.width, receiver.width, receiver.kv_heads, config.hidden
    per_path = (w_in + 1) * w_out + (2 * w_out + 1) * hidden + (hidden + 1) * w_out + (hidden + 1) * heads
    return receiver.layers * (2 * per_path + 1)
