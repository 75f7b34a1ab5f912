"""The training-free `c2c` mapper: closed-form ridge regression from a sender's cache to a receiver's, per layer.

    mapper = fit_ridge(pairs, config)      # pairs: aligned, position-free rows of both models' caches of a text
    keys, values = mapper.transfer(sender_keys, sender_values)

For receiver layer l reading sender layer s = layer_map[l], separately for keys and values: the sender's rows
of layer s flattened over heads, x (N, Hs · Ds), and the receiver's rows of layer l, y (N, Hr · Dr), give
y ≈ x W_l + b_l with

    W_l = (Sxx + λ' I)^-1 Sxy,   b_l = mean(y) - mean(x) W_l,   λ' = λ · tr(Sxx) / (Hs · Ds)

where Sxx and Sxy are the centred Gram and cross matrices (the bias is not penalised) and λ (`ridge_lambda`) is
relative to the mean eigenvalue of Sxx, so one value suits keys (k-normed in Gemma 3) and values alike. The
statistics are summed pair by pair in float64 (`RidgeStatistics`), so memory does not grow with the data.
Keys are mapped position-free (the mapper contract, `kvmesh.kvcomm.c2c.mappers.base`).

Fusion (`fuse`): receiver + fuse_weight · (mapped sender - receiver), a fixed blend; a ridge mapper learns no
gate. Measured on gemma3-270m -> smollm2-135m: see `kvmesh.kvcomm.c2c.mappers.quality.QUALITY_THRESHOLD`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from kvmesh.kvcomm.c2c.mappers.base import FUSION, TRANSFER, KVMapper, MapperConfig, MapperError, flatten, unflatten


class RidgeMapper(KVMapper):
    """Per receiver layer l: keys_l = flatten(sender keys of layer_map[l]) @ key_weight[l] + key_bias[l], the same
    for values. key_weight, value_weight: (Lr, Hs · Ds, Hr · Dr); key_bias, value_bias: (Lr, Hr · Dr)."""

    kind = "ridge"
    modes = (TRANSFER, FUSION)  # fusion is a fixed blend, needing no training of its own

    def __init__(self, config: MapperConfig, key_weight, key_bias, value_weight, value_bias) -> None:
        if config.kind != self.kind:
            raise MapperError(f"a RidgeMapper needs a config of kind 'ridge', got {config.kind!r}")
        shape = (config.receiver_geometry.layers, config.sender_geometry.width, config.receiver_geometry.width)
        for name, weight, bias in (("key", key_weight, key_bias), ("value", value_weight, value_bias)):
            if tuple(weight.shape) != shape or tuple(bias.shape) != (shape[0], shape[2]):
                raise MapperError(f"{name} weights {tuple(weight.shape)} do not fit {config.direction} {shape}")
        self.config = config
        self.key_weight, self.key_bias = key_weight.float(), key_bias.float()
        self.value_weight, self.value_bias = value_weight.float(), value_bias.float()

    def _map(self, kv: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        rows = flatten(kv.float())[self.config.layer_map]  # (Lr, S, Hs · Ds)
        mapped = torch.baddbmm(bias.to(rows.device)[:, None, :], rows, weight.to(rows.device))
        return unflatten(mapped, self.config.receiver_geometry.kv_heads)

    def transfer(self, keys, values):
        self.check_sender(keys, values)
        return self._map(keys, self.key_weight, self.key_bias), self._map(values, self.value_weight, self.value_bias)

    def fuse(self, receiver_keys, receiver_values, sender_keys, sender_values):
        keys, values = self.transfer(sender_keys, sender_values)
        weight = self.config.fuse_weight
        return receiver_keys + weight * (keys - receiver_keys), receiver_values + weight * (values - receiver_values)

    def tensors(self):
        return {
            "key_weight": self.key_weight,
            "key_bias": self.key_bias,
            "value_weight": self.value_weight,
            "value_bias": self.value_bias,
        }

    @classmethod
    def from_tensors(cls, config, tensors):
        missing = {"key_weight", "key_bias", "value_weight", "value_bias"} - set(tensors)
        if missing:
            raise MapperError(f"the ridge mapper's weights lack {', '.join(sorted(missing))}")
        return cls(config, tensors["key_weight"], tensors["key_bias"], tensors["value_weight"], tensors["value_bias"])


@dataclass(frozen=True)
class CachePair:
    """Aligned rows of two models' caches of the same text, position-free: row n of the sender's and row n of the
    receiver's are the same piece of text.

    sender_keys, sender_values: (Ls, Hs, N, Ds); receiver_keys, receiver_values: (Lr, Hr, N, Dr).
    """

    sender_keys: torch.Tensor
    sender_values: torch.Tensor
    receiver_keys: torch.Tensor
    receiver_values: torch.Tensor


class RidgeStatistics:
    """Sufficient statistics of the ridge fit, accumulated pair by pair in float64 (memory independent of N)."""

    def __init__(self, config: MapperConfig) -> None:
        self.config, self.rows = config, 0
        w_in, w_out = config.sender_geometry.width, config.receiver_geometry.width
        layers_s, layers_r = config.sender_geometry.layers, config.receiver_geometry.layers
        self.sums = {side: torch.zeros(layers_s, w_in, dtype=torch.float64) for side in ("k", "v")}
        self.grams = {side: torch.zeros(layers_s, w_in, w_in, dtype=torch.float64) for side in ("k", "v")}
        self.target_sums = {side: torch.zeros(layers_r, w_out, dtype=torch.float64) for side in ("k", "v")}
        self.cross = {side: torch.zeros(layers_r, w_in, w_out, dtype=torch.float64) for side in ("k", "v")}

    def add(self, pair: CachePair) -> None:
        count = pair.sender_keys.shape[2]
        if pair.receiver_keys.shape[2] != count:
            raise MapperError(f"{count} sender rows paired with {pair.receiver_keys.shape[2]} receiver rows")
        for side, sender, receiver in (
            ("k", pair.sender_keys, pair.receiver_keys),
            ("v", pair.sender_values, pair.receiver_values),
        ):
            x, y = flatten(sender.double()), flatten(receiver.double())  # (Ls, N, W_in), (Lr, N, W_out)
            self.sums[side] += x.sum(1)
            self.grams[side] += x.transpose(1, 2) @ x
            self.target_sums[side] += y.sum(1)
            self.cross[side] += x[self.config.layer_map].transpose(1, 2) @ y
        self.rows += count

    def solve(self) -> RidgeMapper:
        """The centred ridge solution per receiver layer (see the module docstring)."""
        if self.rows < 2:
            raise MapperError(f"a ridge fit needs at least 2 aligned rows, got {self.rows}; give it more texts")
        weights = {}
        for side in ("k", "v"):
            mean_x = self.sums[side][self.config.layer_map] / self.rows  # (Lr, W_in)
            mean_y = self.target_sums[side] / self.rows
            gram = self.grams[side][self.config.layer_map] - self.rows * mean_x[:, :, None] * mean_x[:, None, :]
            cross = self.cross[side] - self.rows * mean_x[:, :, None] * mean_y[:, None, :]
            trace = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
            penalty = self.config.ridge_lambda * trace[:, None, None] * torch.eye(gram.shape[-1], dtype=torch.float64)
            # one layer at a time: MKL's batched float64 LU has failed here (DLASWP) under thread contention
            weight = torch.stack([torch.linalg.solve(a, b) for a, b in zip(gram + penalty, cross, strict=True)])
            weights[side] = (weight, mean_y - (mean_x[:, None, :] @ weight)[:, 0])
        self.config.data = dict(self.config.data) | {"rows": self.rows}
        return RidgeMapper(self.config, *weights["k"], *weights["v"])


def fit_ridge(pairs: Iterable[CachePair], config: MapperConfig) -> RidgeMapper:
    """A `RidgeMapper` fitted on aligned, position-free cache rows (`config.kind` must be "ridge")."""
    if config.kind != "ridge":
        raise MapperError(f"fit_ridge fits kind 'ridge', the config says {config.kind!r}")
    statistics = RidgeStatistics(config)
    for pair in pairs:
        statistics.add(pair)
    return statistics.solve()
