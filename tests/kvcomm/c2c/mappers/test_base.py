"""The mapper contract: layer maps, configs, mapper folders and their errors, checking the models."""

import json

import pytest
import torch
from transformers import AutoConfig

from kvmesh.kvcomm.c2c.mappers.base import (
    KVGeometry,
    MapperConfig,
    MapperError,
    MapperMismatchError,
    check_models,
    default_layer_map,
    load_mapper,
    save_mapper,
)
from kvmesh.kvcomm.c2c.mappers.fuser import Fuser
from kvmesh.kvcomm.c2c.mappers.ridge import RidgeMapper
from kvmesh.llm.registry import resolve


@pytest.fixture(scope="module")
def real_pair():
    return (KVGeometry.of(AutoConfig.from_pretrained(resolve(name))) for name in ("gemma3-270m", "smollm2-135m"))


def test_the_default_layer_map_is_terminal_aligned(real_pair):
    gemma, smollm = real_pair
    assert (gemma.layers, gemma.kv_heads, gemma.head_dim, smollm.width) == (18, 1, 256, 192)
    layers = default_layer_map(gemma, smollm)
    assert len(layers) == 30 and layers[0] == 0 and layers[-1] == 17 and layers == sorted(layers)
    assert layers[15] == round(15 * 17 / 29)
    full = default_layer_map(gemma, smollm, full_attention_only=True)
    assert gemma.full_attention_layers == [5, 11, 17] and set(full) == {5, 11, 17}
    assert full[0] == 5 and full[-1] == 17
    assert default_layer_map(gemma, KVGeometry(1, 1, 8)) == [17]


def _ridge(seed=0) -> RidgeMapper:
    config = MapperConfig(
        "ridge", "sender-x", "receiver-y", KVGeometry(2, 1, 4), KVGeometry(3, 2, 2), data={"task": "t", "texts": 3}
    )
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(3, 4, 4, generator=generator), torch.randn(3, 4, generator=generator)] * 2
    return RidgeMapper(config, *weights)


def test_a_saved_mapper_loads_as_its_own_class(tmp_path):
    ridge = _ridge()
    folder = save_mapper(ridge, tmp_path / "ridge")
    saved = json.loads((folder / "mapper.json").read_text())
    assert saved["direction"] == "sender-x -> receiver-y" and saved["data"] == {"task": "t", "texts": 3}
    loaded = load_mapper(folder)
    assert isinstance(loaded, RidgeMapper) and loaded.config == ridge.config
    keys = torch.randn(2, 1, 5, 4)
    for a, b in zip(loaded.transfer(keys, keys), ridge.transfer(keys, keys), strict=True):
        assert torch.equal(a, b)
    fuser = Fuser(MapperConfig("fuser", "sender-x", "receiver-y", KVGeometry(2, 1, 4), KVGeometry(3, 2, 2), hidden=8))
    assert isinstance(load_mapper(save_mapper(fuser, tmp_path / "fuser")), Fuser)


def test_bad_folders_say_what_is_wrong(tmp_path):
    with pytest.raises(MapperError, match="no mapper folder"):
        load_mapper(tmp_path / "missing")
    with pytest.raises(MapperError, match=r"holds no mapper\.json"):
        load_mapper(tmp_path)
    folder = save_mapper(_ridge(), tmp_path / "ridge")
    with pytest.raises(MapperError, match="holds a 'ridge' mapper, not a 'fuser'"):
        load_mapper(folder, kind="fuser")
    weights = folder / "mapper.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])  # a copy cut short
    with pytest.raises(MapperError, match=r"ridge/mapper\.safetensors cannot be read .* truncated"):
        load_mapper(folder)
    weights.unlink()
    with pytest.raises(MapperError, match=r"no mapper\.safetensors"):
        load_mapper(folder)
    data = json.loads((folder / "mapper.json").read_text())
    (folder / "mapper.json").write_text(json.dumps(data | {"kind": "magic"}))
    with pytest.raises(MapperError, match="kind must be one of ridge, fuser"):
        load_mapper(folder)
    (folder / "mapper.json").write_text("{not json")
    with pytest.raises(MapperError, match="not valid JSON"):
        load_mapper(folder)


def test_configs_are_checked():
    sender, receiver = KVGeometry(2, 1, 4), KVGeometry(3, 2, 2)
    with pytest.raises(MapperError, match="3 layers"):
        MapperConfig("ridge", "a", "b", sender, receiver, layer_map=[0, 1])
    with pytest.raises(MapperError, match=r"outside 0 \.\. 1"):
        MapperConfig("ridge", "a", "b", sender, receiver, layer_map=[0, 1, 2])
    with pytest.raises(MapperError, match="kind"):
        MapperConfig("linear", "a", "b", sender, receiver)
    with pytest.raises(MapperError, match="kind 'ridge'"):
        RidgeMapper(MapperConfig("fuser", "a", "b", sender, receiver), *_ridge().tensors().values())


def test_a_mapper_for_other_models_is_refused_naming_both(tiny):
    ridge = _ridge()
    check_models(ridge, "sender-x", "receiver-y")
    with pytest.raises(MapperMismatchError, match=r"maps sender-x -> receiver-y .* smollm2-135m -> receiver-y"):
        check_models(ridge, "smollm2-135m", "receiver-y")
    geometry = KVGeometry.of(tiny)
    config = MapperConfig("ridge", "tiny-random", "tiny-random", geometry, KVGeometry(2, 1, 4))
    with pytest.raises(MapperMismatchError, match="another KV geometry"):
        check_models(config, tiny, tiny)
