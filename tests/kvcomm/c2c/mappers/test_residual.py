"""The fusion fuser: a gated residual over both models' rows that changes nothing where its gate is closed."""

import pytest
import torch
from transformers import AutoConfig

from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig, MapperError, load_mapper
from kvmesh.kvcomm.c2c.mappers.residual import ResidualFuser, parameter_count
from kvmesh.llm.registry import resolve

SENDER, RECEIVER = KVGeometry(3, 1, 8), KVGeometry(4, 2, 4)


def _fuser(trained: bool = True) -> ResidualFuser:
    """A residual fuser; `trained`: every weight random (as after training), gates open on layers 0 and 2."""
    torch.manual_seed(0)
    fuser = ResidualFuser(MapperConfig("residual", "sender-x", "receiver-y", SENDER, RECEIVER, hidden=16))
    if trained:
        with torch.no_grad():
            for parameter in fuser.parameters():
                parameter.normal_()
            fuser.gate_logits.copy_(torch.tensor([1.0, -1.0, 0.5, -0.5]))
    return fuser.eval()


def _rows(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    receiver = [torch.randn(4, 2, 5, 4, generator=generator) for _ in range(2)]
    sender = [torch.randn(3, 1, 5, 8, generator=generator) for _ in range(2)]
    return (*receiver, *sender)


@torch.no_grad()
def test_a_fresh_fuser_returns_the_receivers_rows_unchanged():
    rows = _rows(1)
    keys, values = _fuser(trained=False).fuse(*rows)
    assert torch.equal(keys, rows[0]) and torch.equal(values, rows[1])


@torch.no_grad()
def test_a_closed_gate_changes_no_bit_of_its_layer_and_an_open_one_changes_it():
    fuser = _fuser()
    rows = _rows(2)
    keys, values = fuser.fuse(*rows)
    assert fuser.open_layers() == [0, 2]
    for closed in (1, 3):
        assert torch.equal(keys[closed], rows[0][closed]) and torch.equal(values[closed], rows[1][closed])
    for open_ in (0, 2):
        assert not torch.allclose(keys[open_], rows[0][open_]) and not torch.allclose(values[open_], rows[1][open_])


@torch.no_grad()
def test_the_residual_reads_the_receivers_rows_as_well_as_the_senders():
    fuser = _fuser()
    first, second = _rows(3), _rows(4)
    same_sender = (second[0], second[1], first[2], first[3])  # other receiver rows, the same sender rows
    added = [fused - rows[0] for fused, rows in ((fuser.fuse(*first)[0], first), (fuser.fuse(*same_sender)[0], second))]
    assert not torch.allclose(added[0][0], added[1][0])  # what is added depends on the receiver's rows
    other_sender = (first[0], first[1], second[2], second[3])
    assert not torch.allclose(fuser.fuse(*other_sender)[0][0], fuser.fuse(*first)[0][0])  # and on the sender's


def test_transfer_and_misaligned_rows_are_refused():
    fuser, rows = _fuser(), _rows(5)
    with pytest.raises(MapperError, match="serves c2c fusion, not transfer"):
        fuser.transfer(rows[2], rows[3])
    with pytest.raises(MapperError, match="one sender row per receiver row"):
        fuser.fuse(rows[0], rows[1], rows[2][:, :, :3], rows[3][:, :, :3])


def test_the_fusion_fuser_for_gemma3_to_smollm2_has_at_most_20m_parameters():
    sender, receiver = (KVGeometry.of(AutoConfig.from_pretrained(resolve(n))) for n in ("gemma3-270m", "smollm2-135m"))
    config = MapperConfig("residual", "gemma3-270m", "smollm2-135m", sender, receiver)  # hidden 256, the default
    count = parameter_count(config)
    assert count == ResidualFuser(config).parameter_count() <= 20_000_000


@torch.no_grad()
def test_save_and_load_round_trip(tmp_path):
    fuser, rows = _fuser(), _rows(6)
    loaded = load_mapper(fuser.save(tmp_path / "residual"))
    assert isinstance(loaded, ResidualFuser) and not loaded.training and loaded.config == fuser.config
    for a, b in zip(loaded.fuse(*rows), fuser.fuse(*rows), strict=True):
        assert torch.equal(a, b)
