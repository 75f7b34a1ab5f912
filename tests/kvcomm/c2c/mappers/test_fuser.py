"""The transfer fuser: gates that anneal from soft to hard, its size for the real pair, saving and loading, and
no fusion (it was not trained for it)."""

import math

import pytest
import torch
from transformers import AutoConfig

from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig, MapperError, load_mapper
from kvmesh.kvcomm.c2c.mappers.fuser import Fuser, parameter_count
from kvmesh.kvcomm.c2c.mappers.gates import temperature_at
from kvmesh.kvcomm.c2c.mappers.ridge import RidgeMapper
from kvmesh.llm.registry import resolve

SENDER, RECEIVER = KVGeometry(3, 1, 8), KVGeometry(4, 2, 4)


def _fuser(hidden=16) -> Fuser:
    torch.manual_seed(0)
    return Fuser(MapperConfig("fuser", "sender-x", "receiver-y", SENDER, RECEIVER, hidden=hidden))


def test_the_gates_go_from_soft_to_hard_as_the_temperature_anneals():
    fuser = _fuser().train()
    with torch.no_grad():
        fuser.gate_logits.copy_(torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert temperature_at(0, 100) == 1.0 and temperature_at(99, 100) == pytest.approx(1e-3)
    assert temperature_at(50, 100) < temperature_at(10, 100)
    soft, hard = [], []
    for step in (0, 99):
        fuser.temperature = temperature_at(step, 100)
        (soft if step == 0 else hard).append(fuser.gates(torch.Generator().manual_seed(3)))
    assert bool(((soft[0] > 0.01) & (soft[0] < 0.99)).all())  # soft: strictly between, noisy
    assert bool(((hard[0] < 1e-6) | (hard[0] > 1 - 1e-6)).all())  # annealed: 0 or 1
    fuser.eval()  # inference: the sign of the logit, no noise
    assert fuser.gates().tolist() == [1.0, 0.0, 1.0, 0.0] and fuser.open_layers() == [0, 2]
    assert fuser.layer_gates().tolist() == [1.0, 0.0, 1.0, 0.0]  # what the channel masks closed layers by


def test_a_fuser_started_from_ridge_maps_like_it():
    fuser = _fuser().eval()
    generator = torch.Generator().manual_seed(1)
    weights = [torch.randn(4, 8, 8, generator=generator), torch.randn(4, 8, generator=generator)]
    config = MapperConfig("ridge", "sender-x", "receiver-y", SENDER, RECEIVER)
    ridge = RidgeMapper(config, weights[0], weights[1], 2 * weights[0], weights[1])
    fuser.init_from(ridge)
    keys, values = torch.randn(3, 1, 6, 8), torch.randn(3, 1, 6, 8)
    expected = ridge.transfer(keys, values)
    with torch.no_grad():
        for got, want in zip(fuser.transfer(keys, values), expected, strict=True):
            torch.testing.assert_close(got, want / (1 + math.exp(-4.0)))  # the per-head weights start at sigmoid(4)
        receiver = torch.ones(4, 2, 6, 4)
        with pytest.raises(MapperError, match="serves c2c transfer, not fusion"):
            fuser.fuse(receiver, receiver, keys, values)  # it writes whole caches: added to the receiver's, doubled
    other = RidgeMapper(
        MapperConfig("ridge", "a", "b", SENDER, RECEIVER, layer_map=[0, 0, 0, 0]), *ridge.tensors().values()
    )
    with pytest.raises(MapperError, match="does not fit this fuser"):
        fuser.init_from(other)


def test_the_fuser_for_gemma3_to_smollm2_has_at_most_20m_parameters():
    sender, receiver = (KVGeometry.of(AutoConfig.from_pretrained(resolve(n))) for n in ("gemma3-270m", "smollm2-135m"))
    config = MapperConfig("fuser", "gemma3-270m", "smollm2-135m", sender, receiver)  # hidden 256, the default
    count = parameter_count(config)
    assert count == Fuser(config).parameter_count() == 9_915_090
    assert count <= 20_000_000


def test_save_and_load_round_trip(tmp_path):
    fuser = _fuser()
    with torch.no_grad():
        for parameter in fuser.parameters():
            parameter.normal_()
    folder = fuser.save(tmp_path / "fuser")
    loaded = load_mapper(folder)
    assert isinstance(loaded, Fuser) and not loaded.training and loaded.config == fuser.config
    keys = torch.randn(3, 1, 4, 8)
    fuser.eval()
    with torch.no_grad():
        for a, b in zip(loaded.transfer(keys, keys), fuser.transfer(keys, keys), strict=True):
            assert torch.equal(a, b)
    smaller = MapperConfig("fuser", "sender-x", "receiver-y", SENDER, RECEIVER, hidden=4)
    with pytest.raises(MapperError, match="do not fit its config"):
        Fuser.from_tensors(smaller, fuser.tensors())
