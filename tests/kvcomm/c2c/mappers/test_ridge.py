"""The ridge mapper: recovers a known linear map, streams its statistics, blends in fusion mode."""

import pytest
import torch

from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig, MapperError, flatten, unflatten
from kvmesh.kvcomm.c2c.mappers.ridge import CachePair, RidgeMapper, RidgeStatistics, fit_ridge

SENDER, RECEIVER = KVGeometry(3, 2, 4), KVGeometry(4, 3, 2)  # W_in = 8, W_out = 6


def _config(**settings) -> MapperConfig:
    return MapperConfig("ridge", "sender-x", "receiver-y", SENDER, RECEIVER, **settings)


def _synthetic(config, rows: int, seed: int = 0, noise: float = 0.0):
    """Sender caches and receiver caches that are a known affine map of them, per receiver layer."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(RECEIVER.layers, SENDER.width, RECEIVER.width, generator=generator, dtype=torch.float64)
    bias = torch.randn(RECEIVER.layers, RECEIVER.width, generator=generator, dtype=torch.float64)
    truth = RidgeMapper(config, weight, bias, 2 * weight, -bias)
    keys = torch.randn(SENDER.layers, SENDER.kv_heads, rows, SENDER.head_dim, generator=generator) * 3 + 1
    values = torch.randn(SENDER.layers, SENDER.kv_heads, rows, SENDER.head_dim, generator=generator)
    target_keys, target_values = truth.transfer(keys, values)
    target_keys = target_keys + noise * torch.randn(target_keys.shape, generator=generator)
    return truth, CachePair(keys, values, target_keys, target_values)


def test_recovers_a_known_linear_map():
    config = _config(ridge_lambda=1e-10)
    truth, pair = _synthetic(config, rows=400)
    fitted = fit_ridge([pair], config)
    for name, tensor in truth.tensors().items():
        torch.testing.assert_close(fitted.tensors()[name], tensor.float(), atol=1e-4, rtol=1e-4)
    assert fitted.config.data["rows"] == 400
    mapped, _ = fitted.transfer(pair.sender_keys, pair.sender_values)
    assert mapped.shape == (RECEIVER.layers, RECEIVER.kv_heads, 400, RECEIVER.head_dim)


def test_statistics_stream_pair_by_pair():
    config = _config()
    _, pair = _synthetic(config, rows=90, noise=0.5)
    whole = fit_ridge([pair], config)
    split = fit_ridge(
        [CachePair(*(kv[:, :, lo : lo + 30] for kv in vars(pair).values())) for lo in (0, 30, 60)], config
    )
    torch.testing.assert_close(whole.key_weight, split.key_weight, atol=1e-5, rtol=1e-5)


def test_the_penalty_shrinks_towards_the_mean():
    config = _config(ridge_lambda=1e8)
    _, pair = _synthetic(config, rows=200)
    fitted = fit_ridge([pair], config)
    assert float(fitted.key_weight.abs().max()) < 1e-4
    mean = flatten(pair.receiver_keys).mean(1)  # (Lr, W_out): all that is left is the bias
    torch.testing.assert_close(fitted.key_bias, mean, atol=1e-3, rtol=1e-3)


def test_fusion_blends_receiver_and_mapped_sender():
    config = _config(fuse_weight=0.25)
    truth, pair = _synthetic(config, rows=5)
    receiver_keys = torch.zeros(RECEIVER.layers, RECEIVER.kv_heads, 5, RECEIVER.head_dim)
    keys, _ = truth.fuse(receiver_keys, receiver_keys, pair.sender_keys, pair.sender_values)
    torch.testing.assert_close(keys, 0.25 * pair.receiver_keys)


def test_bad_inputs_are_refused():
    config = _config()
    with pytest.raises(MapperError, match="at least 2"):
        RidgeStatistics(config).solve()
    truth, pair = _synthetic(config, rows=4)
    with pytest.raises(MapperError, match=r"sender keys must be \(L=3, H=2, S, D=4\)"):
        truth.transfer(pair.sender_keys[:2], pair.sender_values[:2])
    with pytest.raises(MapperError, match="paired with"):
        fit_ridge(
            [CachePair(pair.sender_keys, pair.sender_values, pair.receiver_keys[:, :, :3], pair.receiver_values)],
            config,
        )
    assert torch.equal(unflatten(flatten(pair.sender_keys), 2), pair.sender_keys)
