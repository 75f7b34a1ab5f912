"""A trained mapper's closed gates: transfer hides the mapped context from those layers, fusion leaves their rows
as they were, and a mapper is refused in a mode it was not trained for."""

import pytest
import torch

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.graph import Edge
from kvmesh.kvcomm.assembly import TASK, Piece
from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig, load_mapper, save_mapper
from kvmesh.kvcomm.c2c.mappers.fuser import Fuser
from kvmesh.kvcomm.c2c.mappers.quality import MapperQualityError, mapping_quality
from kvmesh.kvcomm.c2c.mappers.residual import ResidualFuser
from kvmesh.kvcomm.c2c.task_fusion import FUSE, fuse_task
from kvmesh.kvcomm.channel import ChannelNotAvailableError
from kvmesh.kvcomm.rope import LayerRope
from kvmesh.llm.base import run_requests
from kvmesh.llm.layer_mask import PREFIX
from kvmesh.llm.segment import KVSegment

QUESTION = Task("Where is the blue key?", id="t", shards={"a": "The blue key is in the attic."})
PROBES = [(f"Key {i} lies in room {i * 3}.", " Where?") for i in range(3)]


def gated(kind, sender, receiver, folder, gates):
    """A trained-like mapper (random weights) with the given gate logits, its quality recorded as the channel
    asks (the gate's verdict is not what these tests are about: they pass threshold -1 and margin -2)."""
    geometry = KVGeometry.of(sender), KVGeometry.of(receiver)
    config = MapperConfig(kind, sender.spec, receiver.spec, *geometry, full_attention_only=True, hidden=8)
    torch.manual_seed(0)
    mapper = (Fuser if kind == "fuser" else ResidualFuser)(config)
    with torch.no_grad():
        for parameter in mapper.parameters():
            parameter.normal_(0, 0.5)
        mapper.gate_logits.copy_(torch.tensor(gates))
    mapper.eval()
    if kind == "fuser":
        mapper.config.quality = mapping_quality(mapper, sender, receiver, PROBES).to_dict()
    return save_mapper(mapper, folder)


def pair(sender, folder, mode="transfer"):
    agents = [Agent("a", model=sender, max_new_tokens=6), Agent("b", model="tiny-random", max_new_tokens=8)]
    channels = {"c2c": {"mapper": str(folder), "threshold": -1.0, "margin": -2.0, "mode": mode}}
    return Team(agents, CommGraph(["a", "b"], [Edge("a", "b", channel="c2c")]), decision="last", channels=channels)


def test_a_mapper_with_every_gate_closed_is_refused_as_carrying_nothing(tiny, sliding, tmp_path):
    folder = gated("fuser", sliding, tiny, tmp_path / "closed", [-1.0, -1.0])
    with pytest.raises(MapperQualityError, match="every gate of this fuser mapper is closed"):
        pair(sliding, folder)
    opened = gated("fuser", sliding, tiny, tmp_path / "open", [1.0, -1.0])
    result = pair(sliding, opened).run(QUESTION)  # one open layer: accepted, and its context is read
    assert result.messages[1].usage_metadata["input_token_details"]["cache_read"] > 0
    assert result.usage.per_edge["a->b"].kv_bytes > 0


def test_a_closed_layer_puts_no_attention_on_the_mapped_context(tiny, sliding, tmp_path):
    folder = gated("fuser", sliding, tiny, tmp_path / "half", [1.0, -1.0])  # layer 0 fed, layer 1 closed
    weights: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    hooks = [
        layer.self_attn.register_forward_hook(lambda m, a, out, i=i: weights[i].append(out[1]))
        for i, layer in enumerate(tiny.model.model.layers)
    ]
    current = tiny.model.config._attn_implementation
    tiny.model.set_attn_implementation(PREFIX + "eager")  # eager attention returns its weights
    try:
        result = pair(sliding, folder).run(QUESTION)
    finally:
        tiny.model.set_attn_implementation(current)
        for hook in hooks:
            hook.remove()
    context = result.messages[1].usage_metadata["input_token_details"]["cache_read"]
    # the receiver's passes: every one after its prefix was placed reads the context's columns first
    fed, closed = (torch.cat([w[..., :context].flatten() for w in weights[i] if w.shape[-1] > context]) for i in (0, 1))
    assert float(closed.abs().max()) == 0.0
    assert float(fed.sum()) > 0.0


def _fusion_inputs(tiny, sender_rows):
    """A receiver prompt holding a task, and a sender piece of rows aligned to the task's tokens."""
    head = tiny.encode_prompt("<|im_start|>user\n")
    task = tiny.encode_prompt("Question: Where is the blue key?")
    tail = tiny.encode_prompt("<|im_end|>\n<|im_start|>assistant\n")
    keys, values = sender_rows(len(task))
    sender = Piece(source=KVSegment(keys, values, 0, tuple(task)), kind=FUSE, channel="c2c")
    pieces = [Piece(tuple(head), kind="head"), Piece(tuple(task), kind=TASK), sender, Piece(tuple(tail), kind="tail")]
    return pieces, sender, len(head), len(head) + len(task)


def _run(tiny, preparation):
    (request,) = next(preparation)
    (read,) = run_requests(tiny, [request])
    with pytest.raises(StopIteration) as done:
        preparation.send([read])
    return read.prompt_kv, done.value.value


def test_fusion_changes_no_bit_of_a_closed_layer(tiny, sliding, tmp_path):
    mapper_folder = gated("residual", sliding, tiny, tmp_path / "residual", [1.0, -1.0])
    mapper = load_mapper(mapper_folder)
    geometry = mapper.config.sender_geometry

    def sender_rows(count):
        generator = torch.Generator().manual_seed(0)
        shape = (geometry.layers, geometry.kv_heads, count, geometry.head_dim)
        return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)

    pieces, sender, start, end = _fusion_inputs(tiny, sender_rows)
    rope = LayerRope.from_model(tiny.model)
    own, assembly = _run(tiny, fuse_task(pieces, [sender], rope, mapper, mapper.open_layers()))
    assert torch.equal(assembly.keys[1, :, :end], own.keys[1]) and torch.equal(
        assembly.values[1, :, :end], own.values[1]
    )
    assert not torch.allclose(assembly.keys[0, :, start:end], own.keys[0, :, start:end])  # the open layer is fused
    assert torch.equal(assembly.keys[0, :, :start], own.keys[0, :, :start])  # before the task: untouched


def test_a_mapper_is_refused_in_a_mode_it_was_not_trained_for(tiny, sliding, tmp_path):
    transfer = gated("fuser", sliding, tiny, tmp_path / "fuser", [1.0, 1.0])
    with pytest.raises(ChannelNotAvailableError, match="serves c2c transfer, not fusion"):
        pair(sliding, transfer, mode="fusion")
    fusion = gated("residual", sliding, tiny, tmp_path / "residual", [1.0, 1.0])
    with pytest.raises(ChannelNotAvailableError, match="serves c2c fusion, not transfer"):
        pair(sliding, fusion, mode="transfer")
