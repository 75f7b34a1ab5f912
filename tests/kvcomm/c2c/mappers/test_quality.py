"""Mapping quality: the receiver's attention outputs over mapped against real caches, per layer."""

import pytest
import torch

from kvmesh.evals.benchmarks.infoqa import generate
from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig
from kvmesh.kvcomm.c2c.mappers.quality import (
    QUALITY_THRESHOLD,
    MapperQualityError,
    attention_outputs,
    check_quality,
    mapping_quality,
)
from kvmesh.kvcomm.c2c.mappers.ridge import RidgeMapper, fit_ridge
from kvmesh.training.kv_mappers import aligned_pairs, probe_text, sender_context


def test_attention_outputs_are_causal_windowed_softmax_attention():
    torch.manual_seed(0)
    queries, keys, values = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    query_positions, key_positions = torch.tensor([3, 4, 5]), torch.arange(5)
    out = attention_outputs(queries, query_positions, keys, values, key_positions, [0.5, 0.25], [None, 2])
    assert out.shape == (2, 3, 4 * 8)
    for layer, (scale, window) in enumerate([(0.5, None), (0.25, 2)]):
        for p, q_pos in enumerate(query_positions.tolist()):
            for head in range(4):
                seen = [k for k in range(5) if k <= q_pos and (window is None or q_pos - k < window)]
                kv_head = head // 2  # grouped-query attention: two query heads per key head
                logits = keys[layer, kv_head, seen] @ queries[layer, head, p] * scale
                expected = torch.softmax(logits, 0) @ values[layer, kv_head, seen]
                torch.testing.assert_close(out[layer, p, head * 8 : head * 8 + 8], expected)


def _identity(model) -> RidgeMapper:
    geometry = KVGeometry.of(model)
    config = MapperConfig("ridge", model.spec, model.spec, geometry, geometry, layer_map=list(range(geometry.layers)))
    eye = torch.eye(geometry.width).repeat(geometry.layers, 1, 1)
    zero = torch.zeros(geometry.layers, geometry.width)
    return RidgeMapper(config, eye, zero, eye, zero)


def test_a_model_mapped_onto_itself_reads_exactly_its_own_cache(tiny):
    texts = [("Mira's brother is Tavo. Tavo lives in Orvik.", "\nQuestion: Where does Tavo live?\nAnswer:")]
    quality = mapping_quality(_identity(tiny), tiny, tiny, [*texts, "Notes: 12 apples."])
    assert quality.texts == 2 and quality.probe_tokens > 10
    assert all(c == pytest.approx(1.0, abs=1e-5) for c in quality.per_layer)


@pytest.fixture
def one_thread():
    """Two shared cores: one torch thread is many times faster than two fighting other work for them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_ridge_passes_on_the_real_pair_and_a_random_map_is_refused(one_thread):
    from kvmesh import load_model

    sender, receiver = load_model("gemma3-270m"), load_model("smollm2-135m")
    config = MapperConfig("ridge", sender.spec, receiver.spec, KVGeometry.of(sender), KVGeometry.of(receiver))
    texts = [f"{sender_context(t)}\nAnswer: {t.answer}" for t in generate(20, "train", 0)]
    ridge = fit_ridge(aligned_pairs(sender, receiver, texts), config)
    probes = [(sender_context(t), probe_text(t)) for t in generate(4, "validation", 0)]
    quality = check_quality(ridge, sender, receiver, probes)
    assert quality.mean > QUALITY_THRESHOLD + 0.15 and len(quality.per_layer) == 30
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(30, 256, 192, generator=generator) / 16, torch.zeros(30, 192)] * 2
    random = RidgeMapper(config, weights[0], weights[1], weights[2].clone(), weights[3].clone())
    with pytest.raises(MapperQualityError, match=r"mean cosine -?0\.\d+ < threshold .* per layer 0: "):
        check_quality(random, sender, receiver, probes)
